//! Workers: slots, claims and the dispatcher.
//!
//! A slot is reserved (`in_flight`) before a claim and kept by the job's runner, which takes
//! the next due job itself when it finishes one; the dispatcher only fans out new work (after a
//! submit, an eta, or a freed slot) and ends a drain.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tlo_core::{ClaimRequest, Job, JobState, QueueDemand};

use crate::engine::{Engine, StopMode};
use crate::runner::run_loop;

/// Most jobs taken in one claim.
pub(crate) const CLAIM_BATCH: usize = 256;

impl Engine {
    /// Reserves up to `want` of the free slots; returns how many were reserved.
    pub(crate) fn reserve(&self, want: usize) -> usize {
        let limit = self.settings.concurrency;
        let mut reserved = 0;
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                reserved = want.min(limit.saturating_sub(current));
                (reserved > 0).then_some(current + reserved)
            });
        reserved
    }

    /// Gives back `count` reserved slots.
    pub(crate) fn unreserve(&self, count: usize) {
        if count > 0 {
            self.in_flight.fetch_sub(count, Ordering::AcqRel);
            if self.is_stopping() {
                self.finished.notify_waiters();
            }
        }
    }

    /// A runner is done with its slot: the dispatcher may have work for it.
    pub(crate) fn release_slot(&self) {
        self.unreserve(1);
        self.wake.notify_one();
    }

    /// A job left its queue (for per-queue limits).
    pub(crate) fn leave_queue(&self, queue: &str) {
        if !self.settings.queue_concurrency.is_empty() {
            if let Some(count) = self.queue_in_flight.lock().get_mut(queue) {
                *count = count.saturating_sub(1);
            }
        }
    }

    /// Whether jobs may be taken now: running, or draining.
    pub(crate) fn may_claim(&self) -> bool {
        matches!(self.stop_mode(), StopMode::Running | StopMode::Drain)
    }

    /// The instant claims compare etas with, or `None` when no claim may be made (stopping).
    fn claim_now(&self) -> Option<DateTime<Utc>> {
        match self.stop_mode() {
            StopMode::Running => Some(Utc::now()),
            // Drain takes what was due when it began, and jobs it put back itself.
            StopMode::Drain => match *self.drain_since.lock() {
                Some(since) if self.drain_snoozed.lock().is_empty() => Some(since),
                _ => Some(Utc::now()),
            },
            StopMode::Cancel | StopMode::Ignore => None,
        }
    }

    pub(crate) async fn claim(&self, slots: usize) -> Vec<Job> {
        let limits = &self.settings.queue_concurrency;
        // Per-queue limits need the counts and the claim to agree: claims take turns.
        let _turn = if limits.is_empty() {
            None
        } else {
            Some(self.claim_turn.lock().await)
        };
        let counts = (!limits.is_empty()).then(|| self.queue_in_flight.lock().clone());
        let Some(request) = self.claim_request(slots, counts.as_ref()) else {
            return Vec::new();
        };
        let jobs = match self.store.claim(&request).await {
            Ok(jobs) => {
                let failed = self.claim_failures.swap(0, Ordering::AcqRel);
                if failed > 0 {
                    tracing::info!(failed, "claiming jobs works again");
                }
                jobs
            }
            Err(err) => {
                // Once per outage, not once per poll: the store may be down for minutes.
                if self.claim_failures.fetch_add(1, Ordering::AcqRel) == 0 {
                    tracing::warn!(error = %err, "claiming jobs failed; retrying with backoff");
                } else {
                    tracing::debug!(error = %err, "claiming jobs failed again");
                }
                return Vec::new();
            }
        };
        if !limits.is_empty() {
            let mut counts = self.queue_in_flight.lock();
            for job in &jobs {
                *counts.entry(job.queue.clone()).or_default() += 1;
            }
        }
        self.note_claimed(&jobs);
        jobs
    }

    /// A claim request for `slots` jobs, each queue's demand capped by its limit given the
    /// jobs of each queue in flight (`counts`); `None` when no claim may be made (stopping).
    fn claim_request(
        &self,
        slots: usize,
        counts: Option<&HashMap<String, usize>>,
    ) -> Option<ClaimRequest> {
        let now = self.claim_now()?;
        let limits = &self.settings.queue_concurrency;
        Some(ClaimRequest {
            worker: self.worker_id.clone(),
            queues: self
                .served_queues()
                .iter()
                .map(|queue| {
                    let free = match (limits.get(queue), counts) {
                        (Some(cap), Some(counts)) => {
                            cap.saturating_sub(counts.get(queue).copied().unwrap_or(0))
                        }
                        _ => slots,
                    };
                    QueueDemand {
                        queue: queue.clone(),
                        limit: free.min(slots),
                    }
                })
                .collect(),
            limit: slots.min(CLAIM_BATCH),
            now,
            lease: self.settings.lease,
        })
    }

    /// A claim request for `slots` jobs that needs no per-queue bookkeeping, or `None` when
    /// claims must take turns (per-queue limits) or none may be made (stopping).
    pub(crate) fn plain_claim_request(&self, slots: usize) -> Option<ClaimRequest> {
        if !self.settings.queue_concurrency.is_empty() {
            return None;
        }
        self.claim_request(slots, None)
    }

    /// Starts runners for `jobs`, claimed into `reserved` slots; gives back the slots left
    /// over. Returns how many started.
    pub(crate) fn start_claimed(self: &Arc<Self>, reserved: usize, jobs: Vec<Job>) -> usize {
        self.unreserve(reserved - jobs.len());
        let started = jobs.len();
        for job in jobs {
            tokio::spawn(run_loop(self.clone(), job));
        }
        started
    }

    /// Bookkeeping after a claim.
    pub(crate) fn note_claimed(&self, jobs: &[Job]) {
        if !self.drain_snoozed.lock().is_empty() {
            let mut snoozed = self.drain_snoozed.lock();
            for job in jobs {
                snoozed.remove(&job.id);
            }
        }
    }

    /// For a runner that finished a job (having spent `ran` on it) and keeps its slot: the
    /// next due job, if any (in a claim shared with other runners, on a shared store).
    pub(crate) async fn claim_next(&self, ran: Option<Duration>) -> Option<Job> {
        match self.claim_in_round(ran).await {
            Ok(job) => job,
            Err(()) => self.claim(1).await.pop(),
        }
    }

    /// Starts runners for up to `want` due jobs, if slots are free; returns how many started.
    pub(crate) async fn fill_slots(self: &Arc<Self>, want: usize) -> usize {
        let reserved = self.reserve(want.min(CLAIM_BATCH));
        if reserved == 0 {
            return 0;
        }
        // Jobs claimed ahead first: they are this worker's already.
        let mut jobs = self.take_ahead(reserved);
        if jobs.len() < reserved {
            jobs.extend(self.claim(reserved - jobs.len()).await);
        }
        self.start_claimed(reserved, jobs)
    }
}

/// The dispatcher: fills free slots, sleeps until new work, a due eta or a freed slot.
pub(crate) async fn dispatch(engine: Arc<Engine>) {
    let mut stop = engine.stop.subscribe();
    loop {
        match engine.stop_mode() {
            StopMode::Cancel | StopMode::Ignore => break,
            StopMode::Drain | StopMode::Running => {}
        }
        if engine.fill_slots(engine.settings.concurrency).await > 0 {
            continue;
        }
        if engine.stop_mode() == StopMode::Drain && drained(&engine).await {
            break;
        }
        let full = engine.in_flight.load(Ordering::Acquire) >= engine.settings.concurrency;
        let poll = engine.settings.poll_interval;
        let wait = if full {
            poll
        } else {
            match engine.store.next_eta(&engine.served_queues()).await {
                // A due job nobody could take (its queue is at its limit): wait for a slot.
                Ok(Some(eta)) => (eta - Utc::now())
                    .to_std()
                    .unwrap_or(poll)
                    .clamp(Duration::from_millis(1), poll),
                _ => poll,
            }
        };
        // While claims fail, poll less and less often (0.2 s doubling to 5 s); a wake-up (a
        // LISTEN connection back, say) still ends the wait at once.
        let failures = engine.claim_failures.load(Ordering::Acquire);
        let wait = if failures > 0 {
            wait.max(claim_backoff(failures))
        } else {
            wait
        };
        tokio::select! {
            _ = engine.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The wait before claiming again after `failures` failed claims in a row.
fn claim_backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(6)).min(5_000))
}

/// A drain is over when nothing runs here and nothing that was due when it began is left.
async fn drained(engine: &Engine) -> bool {
    // An outcome not yet recorded may put a job back (a retry).
    if engine.in_flight.load(Ordering::Acquire) > 0
        || engine.recording.load(Ordering::Acquire) > 0
        || engine.ahead_pending()
    {
        return false;
    }
    let snoozed: Vec<_> = engine.drain_snoozed.lock().iter().copied().collect();
    for id in snoozed {
        match engine.store.get(id).await {
            Ok(Some(job)) if job.state == JobState::Scheduled => return false,
            _ => {
                engine.drain_snoozed.lock().remove(&id);
            }
        }
    }
    let Some(since): Option<DateTime<Utc>> = *engine.drain_since.lock() else {
        return true;
    };
    matches!(
        engine.store.count_due(&engine.served_queues(), since).await,
        Ok(0)
    )
}
