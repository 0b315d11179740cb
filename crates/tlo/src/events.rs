//! Job events: a broadcast stream for live updates, per-job wake-ups for handles, and hooks.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tlo_core::{Job, JobId, JobIdMap, JobState, Progress};
use tokio::sync::{broadcast, watch};

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobEventKind {
    /// Submitted.
    Enqueued,
    /// An attempt started.
    Started,
    /// Progress was reported (flushed).
    Progress {
        /// The new progress.
        progress: Progress,
    },
    /// Ended `done`.
    Succeeded,
    /// Ended `failed`.
    Failed {
        /// Its error.
        error: String,
    },
    /// An attempt failed and another is scheduled.
    Retried {
        /// The attempt's error.
        error: String,
        /// When the next attempt is due.
        eta: DateTime<Utc>,
    },
    /// Put back because its exclusivity key is held.
    Snoozed {
        /// When it is tried again.
        eta: DateTime<Utc>,
    },
    /// A cancel was requested while it ran.
    CancelRequested,
    /// Ended `cancelled`.
    Cancelled,
}

/// One event of one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobEvent {
    /// The job.
    pub job: JobId,
    /// Its task.
    pub task: String,
    /// The job's state after the event.
    pub state: JobState,
    /// The attempt it concerns.
    pub attempt: u32,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: JobEventKind,
}

impl JobEvent {
    pub(crate) fn of(job: &Job, kind: JobEventKind) -> Self {
        JobEvent {
            job: job.id,
            task: job.task.clone(),
            state: job.state,
            attempt: job.attempt,
            at: Utc::now(),
            kind,
        }
    }
}

/// Fans events out: to broadcast subscribers and to handles waiting on one job.
pub(crate) struct EventBus {
    broadcast: broadcast::Sender<JobEvent>,
    watchers: Mutex<JobIdMap<watch::Sender<u64>>>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        EventBus {
            broadcast: broadcast::channel(capacity).0,
            watchers: Mutex::new(JobIdMap::default()),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.broadcast.subscribe()
    }

    /// A receiver that changes whenever `job` has an event.
    pub(crate) fn watch(&self, job: JobId) -> watch::Receiver<u64> {
        self.watchers
            .lock()
            .entry(job)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Whether anyone listens; publishing is skipped otherwise, keeping the hot path cheap.
    pub(crate) fn has_listeners(&self) -> bool {
        self.broadcast.receiver_count() > 0 || !self.watchers.lock().is_empty()
    }

    pub(crate) fn publish(&self, event: JobEvent) {
        {
            let mut watchers = self.watchers.lock();
            if let Some(sender) = watchers.get(&event.job) {
                sender.send_modify(|version| *version += 1);
                if event.state.is_end() || sender.receiver_count() == 0 {
                    watchers.remove(&event.job);
                }
            }
        }
        if self.broadcast.receiver_count() > 0 {
            let _ = self.broadcast.send(event);
        }
    }
}

type Hook = Arc<dyn Fn(&Job) + Send + Sync>;

/// Callbacks on job life events, TLO's hooks. They run on the worker right after the store
/// write, so keep them short (spawn for anything slow).
#[derive(Clone, Default)]
pub struct Hooks {
    pub(crate) started: Vec<Hook>,
    pub(crate) succeeded: Vec<Hook>,
    pub(crate) failed: Vec<Hook>,
    pub(crate) retried: Vec<Hook>,
    pub(crate) cancelled: Vec<Hook>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("started", &self.started.len())
            .field("succeeded", &self.succeeded.len())
            .field("failed", &self.failed.len())
            .field("retried", &self.retried.len())
            .field("cancelled", &self.cancelled.len())
            .finish()
    }
}

impl Hooks {
    pub(crate) fn run(hooks: &[Hook], job: &Job) {
        for hook in hooks {
            hook(job);
        }
    }
}
