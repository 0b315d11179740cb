//! The `Store` contract: where jobs live, how workers claim them and how they end.
//!
//! Every store (memory, SQLite, PostgreSQL) implements this trait with the same observable
//! behaviour; the reference semantics of each write are the functions of [`crate::transition`],
//! which a store may call directly on a loaded [`Job`] or reproduce in its query language.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{Job, JobFilter, JobId, JobState, LogEntry, NewJob, Progress, Result};

/// The result of submitting one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id: the new one, or the existing job holding the same unique key.
    pub id: JobId,
    /// `false` when a job with the same unique key already existed and was returned instead.
    pub inserted: bool,
}

/// How many jobs a worker wants from one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDemand {
    /// The queue name.
    pub queue: String,
    /// At most this many from it.
    pub limit: usize,
}

/// A worker's request for due jobs.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The claiming worker's id (recorded on the job and its attempt).
    pub worker: String,
    /// The queues to take from, each with its own cap.
    pub queues: Vec<QueueDemand>,
    /// At most this many jobs in all.
    pub limit: usize,
    /// Only jobs with `eta <= now` are due.
    pub now: DateTime<Utc>,
    /// The lease each claimed job gets; the worker renews it while the job runs.
    pub lease: Duration,
}

/// How an attempt ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler returned this result.
    Done(Value),
    /// The handler failed; `retry_at` is set when another attempt should follow.
    Failed {
        /// The error message.
        error: String,
        /// When to try again (`None`: no retry).
        retry_at: Option<DateTime<Utc>>,
    },
    /// The handler stopped because of a cancel.
    Cancelled,
    /// The job could not start (its exclusivity key is held): back to `scheduled` at `eta`
    /// without using up an attempt.
    Snoozed {
        /// When to try again.
        eta: DateTime<Utc>,
    },
}

/// A worker's report of how one attempt ended, fenced by the attempt number.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The job.
    pub id: JobId,
    /// The attempt the worker ran; a mismatch is [`crate::Error::StaleAttempt`].
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// When it ended.
    pub at: DateTime<Utc>,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job had not started; it is now `cancelled`.
    Cancelled,
    /// The job is executing; it is now `cancel_requested` and its worker will stop it.
    Requested,
}

/// Where jobs live. See the module docs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name: `memory`, `sqlite`, `postgres`.
    fn name(&self) -> &'static str;

    /// Whether other processes may work on the same jobs (a shared database).
    fn is_shared(&self) -> bool;

    /// How many rounds of each kind (outcomes recorded with [`Store::complete_many`], claims
    /// shared by runners) an orchestrator on a shared store keeps in flight at once. A store
    /// that groups concurrent calls itself (SQLite's single writer commits them together) does
    /// best with several; one that pays per statement and per commit (a database server) with
    /// fewer, larger rounds.
    fn round_concurrency(&self) -> usize {
        4
    }

    /// Registers `wake`, to be called when another process may have made work due (a new job, a
    /// retry). Stores without cross-process notifications ignore it; workers then poll.
    fn subscribe_wakeups(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        let _ = wake;
    }

    /// Stores new jobs, in order. A job whose unique key is taken is not inserted; the
    /// existing job's id is returned with `inserted: false`.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// Moves up to `request.limit` due jobs to `running` for `request.worker`, best first:
    /// highest priority, then earliest eta, then earliest submission.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Job>>;

    /// [`Store::enqueue`], then [`Store::claim`] for a submitter with free slots; the claim
    /// sees the new jobs (and takes the best due jobs, not necessarily them). A database server
    /// does both in one round trip. The outer error is the enqueue's: once it succeeded, the
    /// jobs are stored whatever becomes of the claim, whose own result is the inner one.
    async fn enqueue_and_claim(
        &self,
        jobs: Vec<NewJob>,
        next: &ClaimRequest,
    ) -> Result<(Vec<Enqueued>, Result<Vec<Job>>)> {
        let enqueued = self.enqueue(jobs).await?;
        Ok((enqueued, self.claim(next).await))
    }

    /// Records how an attempt ended (see [`crate::transition::apply_completion`]).
    async fn complete(&self, completion: Completion) -> Result<Job>;

    /// Records several completions; each succeeds or fails on its own. The durable stores
    /// record them in one transaction.
    async fn complete_many(&self, completions: Vec<Completion>) -> Result<Vec<Result<Job>>> {
        let mut results = Vec::with_capacity(completions.len());
        for completion in completions {
            results.push(self.complete(completion).await);
        }
        Ok(results)
    }

    /// Asks for a job to be cancelled: a `scheduled` job ends `cancelled` at once, an executing
    /// one becomes `cancel_requested`. Of several concurrent requests exactly one succeeds.
    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome>;

    /// Releases or skips a job waiting in `scheduled` (see [`crate::transition::apply_change`]).
    async fn change(&self, id: JobId, change: crate::transition::Change) -> Result<Job>;

    /// [`change`](Store::change) for several jobs in one round: one result per change, in
    /// order; a refused change leaves its job as it was and the others still apply. Stores
    /// that can should do it in one transaction (a workflow coordinator releases a whole
    /// layer of nodes at once).
    async fn change_many(
        &self,
        changes: Vec<(JobId, crate::transition::Change)>,
    ) -> Result<Vec<Result<Job>>> {
        let mut results = Vec::with_capacity(changes.len());
        for (id, change) in changes {
            results.push(self.change(id, change).await);
        }
        Ok(results)
    }

    /// Runs an ended job again at `eta` (see [`crate::transition::apply_relaunch`]).
    async fn relaunch(&self, id: JobId, eta: DateTime<Utc>) -> Result<Job>;

    /// The worker saw the cancel request: `cancel_requested -> cancelling`.
    async fn acknowledge_cancel(&self, id: JobId, attempt: u32) -> Result<()>;

    /// Extends the leases of jobs `worker` is running and returns their current states, so the
    /// worker learns of cancels requested elsewhere. Jobs no longer held are left out.
    async fn renew_leases(
        &self,
        worker: &str,
        jobs: &[(JobId, u32)],
        until: DateTime<Utc>,
    ) -> Result<Vec<(JobId, JobState)>>;

    /// Puts back jobs whose lease expired before `now` (their worker vanished): to `scheduled`
    /// when attempts remain, else `failed`. Returns the rescued jobs as they are now.
    async fn rescue_expired(&self, now: DateTime<Utc>) -> Result<Vec<Job>>;

    /// Sets the progress of an executing job (fenced by attempt).
    async fn set_progress(&self, id: JobId, attempt: u32, progress: Progress) -> Result<()>;

    /// Appends lines to a job's log.
    async fn append_logs(&self, id: JobId, entries: Vec<LogEntry>) -> Result<()>;

    /// A job's log, oldest first.
    async fn logs(&self, id: JobId) -> Result<Vec<LogEntry>>;

    /// One job.
    async fn get(&self, id: JobId) -> Result<Option<Job>>;

    /// Jobs matching `filter`, sorted by depth, then order among siblings, then id.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>>;

    /// How many `scheduled` jobs of `queues` have `eta <= before`.
    async fn count_due(&self, queues: &[String], before: DateTime<Utc>) -> Result<usize>;

    /// The earliest eta among `scheduled` jobs of `queues`.
    async fn next_eta(&self, queues: &[String]) -> Result<Option<DateTime<Utc>>>;

    /// Cancels every `scheduled` job of `queues`; returns how many.
    async fn cancel_scheduled(&self, queues: &[String]) -> Result<usize>;

    /// Deletes up to `limit` jobs in end state `state` that finished before `before`, with their
    /// logs; returns how many. A state that is not an end state is refused: nothing active is
    /// ever pruned. Processes (unique key starting with [`PROCESS_KEY_PREFIX`]) are kept: they
    /// live until deleted.
    ///
    /// [`PROCESS_KEY_PREFIX`]: crate::PROCESS_KEY_PREFIX
    async fn prune(&self, state: JobState, before: DateTime<Utc>, limit: usize) -> Result<usize>;

    /// Deletes these jobs with their logs (ids not found are skipped); returns how many were
    /// deleted. When one of them is active, nothing is deleted: [`Error::ActiveJob`].
    async fn delete(&self, ids: &[JobId]) -> Result<usize>;

    /// Empties a job's log (a relaunched or dismissed process starts a fresh one).
    async fn clear_logs(&self, id: JobId) -> Result<()>;

    /// Records that `schedule` fired for `slot`; `false` when that slot (or a later one) was
    /// already taken, by this or any other scheduler.
    async fn claim_schedule_slot(&self, schedule: &str, slot: DateTime<Utc>) -> Result<bool>;

    /// The last slot `schedule` fired for.
    async fn last_schedule_slot(&self, schedule: &str) -> Result<Option<DateTime<Utc>>>;
}
