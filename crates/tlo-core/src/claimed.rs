//! What a store wrote when it claimed jobs, kept so that completions can be prepared away from
//! the store's writer and written only if the job is unchanged since (optimistic concurrency).
//!
//! A durable store records a completion by reading the job, applying the outcome and writing it
//! back. Most of that work (decoding, applying, encoding) does not need the database: the store
//! wrote the job itself when it claimed it. [`ClaimedDocs`] remembers those writes, with what
//! the store needs to recognise its row unchanged (`W`: SQLite keeps the document it wrote;
//! PostgreSQL needs nothing beyond the claim's time); [`ClaimedDocs::prepare`] applies a
//! completion to the remembered job, and the store writes the result on the condition that the
//! row is unchanged. Any other write in between (progress, a cancel request, a rescue by another
//! process) fails the condition and the store takes its ordinary path: the outcome is the same
//! either way, only cheaper when nothing else touched the job.

use std::sync::Mutex;

use crate::transition::apply_completion;
use crate::{Completion, DateTime, Job, JobIdMap, Utc};

/// Remembered claims, at most [`ClaimedDocs::CAPACITY`]; past that the memory is cleared, which
/// costs only the cheap path for the jobs forgotten.
///
/// ```
/// use tlo_core::claimed::ClaimedDocs;
/// use tlo_core::transition::apply_claim;
/// use tlo_core::{Completion, NewJob, Outcome, Utc};
///
/// let now = Utc::now();
/// let mut job = NewJob::new("report", serde_json::Value::Null).into_job(now);
/// apply_claim(&mut job, "worker-1", now, std::time::Duration::from_secs(20)).unwrap();
/// let written = serde_json::to_string(&job).unwrap();
///
/// let claimed = ClaimedDocs::default();
/// claimed.remember(&job, written.clone());
/// let completion = Completion { id: job.id, attempt: 1, outcome: Outcome::Done(serde_json::Value::Null), at: now };
/// let prepared = claimed.prepare(&completion).expect("remembered");
/// assert_eq!(prepared.written, written); // write only where the stored document is this
/// assert_eq!(prepared.job.state, tlo_core::JobState::Done);
/// assert!(claimed.prepare(&completion).is_none()); // used up
/// ```
#[derive(Debug)]
pub struct ClaimedDocs<W = String> {
    docs: Mutex<JobIdMap<(Job, W)>>,
}

impl<W> Default for ClaimedDocs<W> {
    fn default() -> Self {
        ClaimedDocs {
            docs: Mutex::default(),
        }
    }
}

/// A completion applied to the job as a store claimed it.
#[derive(Debug, Clone)]
pub struct Prepared<W = String> {
    /// What the store remembered of its claim: the condition of the write.
    pub written: W,
    /// When the claim was made (the attempt's start).
    pub claimed_at: Option<DateTime<Utc>>,
    /// The job with the completion applied.
    pub job: Job,
    /// `job` encoded, to be written.
    pub encoded: String,
}

impl<W> ClaimedDocs<W> {
    /// Most claims remembered at once.
    pub const CAPACITY: usize = 16_384;

    /// Remembers that the store claimed `job`, and `written` for the condition.
    pub fn remember(&self, job: &Job, written: W) {
        let mut docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        // Entries whose completion never comes here (the job was cancelled, rescued, or this
        // worker stopped) would pile up: start afresh instead.
        if docs.len() >= Self::CAPACITY {
            docs.clear();
        }
        docs.insert(job.id, (job.clone(), written));
    }

    /// Forgets the claim of `completion`'s job and returns the completion applied to it, or
    /// `None` when the claim is not remembered or the completion does not apply to it (the
    /// store's ordinary path then decides, on the stored job).
    pub fn prepare(&self, completion: &Completion) -> Option<Prepared<W>> {
        let (mut job, written) = self
            .docs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&completion.id)?;
        let claimed_at = job.started_at;
        apply_completion(&mut job, completion).ok()?;
        let encoded = serde_json::to_string(&job).ok()?;
        Some(Prepared {
            written,
            claimed_at,
            job,
            encoded,
        })
    }

    /// How many claims are remembered.
    pub fn len(&self) -> usize {
        self.docs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no claim is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
