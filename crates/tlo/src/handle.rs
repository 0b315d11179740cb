//! Job handles: wait for, inspect, cancel and watch one job (woflo's TaskRun, done right).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tlo_core::{CancelOutcome, Error, Job, JobId, JobState, LogEntry, Result};
use tokio::sync::broadcast;

use crate::engine::Engine;
use crate::events::JobEvent;

/// A handle on one job; `O` is the result type (`serde_json::Value` for by-name submissions).
///
/// Handles are cheap to clone and stay valid across restarts of the orchestrator: they only
/// hold the id and read the store.
pub struct JobHandle<O = Value> {
    id: JobId,
    inserted: bool,
    engine: Arc<Engine>,
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for JobHandle<O> {
    fn clone(&self) -> Self {
        JobHandle {
            id: self.id,
            inserted: self.inserted,
            engine: self.engine.clone(),
            _output: PhantomData,
        }
    }
}

impl<O> fmt::Debug for JobHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.id)
            .field("inserted", &self.inserted)
            .finish()
    }
}

impl<O> JobHandle<O> {
    pub(crate) fn new(engine: Arc<Engine>, id: JobId, inserted: bool) -> Self {
        JobHandle {
            id,
            inserted,
            engine,
            _output: PhantomData,
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// `false` when the submission's unique key was taken and this is the existing job.
    pub fn was_inserted(&self) -> bool {
        self.inserted
    }

    /// The job as stored now.
    pub async fn job(&self) -> Result<Job> {
        self.engine
            .store
            .get(self.id)
            .await?
            .ok_or(Error::JobNotFound(self.id))
    }

    /// The job's state now.
    pub async fn state(&self) -> Result<JobState> {
        Ok(self.job().await?.state)
    }

    /// Whether a handler is executing (running, cancel requested or cancelling).
    pub async fn is_running(&self) -> Result<bool> {
        Ok(self.state().await?.is_executing())
    }

    /// The job's log so far.
    pub async fn logs(&self) -> Result<Vec<LogEntry>> {
        self.engine.store.logs(self.id).await
    }

    /// Waits until the job reaches an end state and returns it.
    pub async fn wait(&self) -> Result<Job> {
        let poll = self.engine.settings.poll_interval;
        let mut changes = self.engine.events.watch(self.id);
        loop {
            let job = self.job().await?;
            if job.state.is_end() {
                return Ok(job);
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        changes = self.engine.events.watch(self.id);
                    }
                }
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Ok(None)`.
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<Option<Job>> {
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(job) => job.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Requests a cancel: a job not started yet ends `cancelled` at once; a running one is
    /// signalled and ends `cancelled` when its handler stops (or `failed` after the grace period).
    pub async fn cancel(&self) -> Result<CancelOutcome> {
        self.engine.cancel(self.id).await
    }

    /// A stream of this job's events (state changes and progress), ending after its end event.
    pub fn events(&self) -> JobEvents {
        JobEvents {
            job: Some(self.id),
            receiver: self.engine.events.subscribe(),
            done: false,
        }
    }
}

impl<O: DeserializeOwned> JobHandle<O> {
    /// Waits for the end and returns the typed result, or the job's error:
    /// [`Error::JobFailed`], [`Error::JobCancelled`] or [`Error::JobSkipped`].
    pub async fn result(&self) -> Result<O> {
        let job = self.wait().await?;
        match job.state {
            JobState::Done => Ok(serde_json::from_value(job.result.unwrap_or(Value::Null))?),
            JobState::Cancelled => Err(Error::JobCancelled(job.id)),
            JobState::Skipped => Err(Error::JobSkipped(job.id)),
            _ => Err(Error::JobFailed {
                job: job.id,
                error: job.error.unwrap_or_default(),
            }),
        }
    }
}

/// A stream of job events: all jobs' (from [`crate::Tlo::events`]) or one job's.
#[derive(Debug)]
pub struct JobEvents {
    job: Option<JobId>,
    receiver: broadcast::Receiver<JobEvent>,
    done: bool,
}

impl JobEvents {
    pub(crate) fn all(receiver: broadcast::Receiver<JobEvent>) -> Self {
        JobEvents {
            job: None,
            receiver,
            done: false,
        }
    }

    /// The next event; `None` once the orchestrator is gone or, for one job's stream, after its
    /// end event. A slow reader that falls behind skips the events it missed.
    pub async fn next(&mut self) -> Option<JobEvent> {
        if self.done {
            return None;
        }
        loop {
            match self.receiver.recv().await {
                Ok(event) => {
                    if self.job.is_some_and(|id| id != event.job) {
                        continue;
                    }
                    if self.job.is_some() && event.state.is_end() {
                        self.done = true;
                    }
                    return Some(event);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "event stream lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
