//! The claim stream: runners asking for their next job, served together, and the jobs
//! claimed [ahead](Ahead) of them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tlo_core::{Completion, Job, JobId, JobState, Outcome};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Finished;
use crate::engine::Engine;
use crate::runner::recorded;

/// Most runners served by one claim.
const CLAIM_BATCH: usize = 256;

/// What the claim stream is asked for.
pub(super) enum Ask {
    /// A runner's next job (`None`: nothing is due).
    Job(oneshot::Sender<Option<Job>>),
    /// Jobs to keep ahead: runners have been taking them.
    Refill,
}

/// Jobs claimed ahead of the runners that will ask for them (see the module docs).
///
/// They are claimed like any other (`running`, leased to this worker): the heartbeat renews
/// their leases, a crash leaves them to the rescuer, and a stop puts back those no runner took
/// ([`Engine::put_back_ahead`]). How many: the slots times a claim's time over a job's (by
/// Little's law, what runners ask for during one claim), at most one per slot; where handlers
/// take longer than claims, few or none. One that no runner took within a heartbeat (handlers
/// suddenly slower) is put back for any worker to take.
#[derive(Default)]
pub(super) struct Ahead {
    jobs: VecDeque<Job>,
    /// How long a claim takes, in microseconds (moving average).
    claim_micros: f64,
    /// How long a runner takes over a job, from taking it to asking for the next, in
    /// microseconds (moving average).
    job_micros: f64,
    /// Jobs being claimed to keep here by the claims under way.
    coming: usize,
    /// Jobs taken out to be put back, not yet written.
    returning: usize,
}

impl Ahead {
    /// Takes out the first `count` jobs to put back, counting them until they are written.
    fn take_to_put_back(&mut self, count: usize) -> Vec<Job> {
        self.returning += count;
        self.jobs.drain(..count).collect()
    }

    /// How many jobs the next claim should leave here, for `slots` runners.
    fn target(&self, slots: usize) -> usize {
        if self.job_micros <= 0.0 {
            return 0;
        }
        let wanted = (slots as f64 * self.claim_micros / self.job_micros).ceil();
        (wanted as usize).min(slots)
    }
}

/// Weight of the newest sample in the moving averages of [`Ahead`].
const SAMPLE_WEIGHT: f64 = 0.2;

fn average(mean: &mut f64, sample: f64) {
    *mean = if *mean <= 0.0 {
        sample
    } else {
        *mean + SAMPLE_WEIGHT * (sample - *mean)
    };
}

impl Engine {
    fn ahead(&self) -> Option<Arc<Mutex<Ahead>>> {
        self.rounds.lock().as_ref().map(|r| r.ahead.clone())
    }

    /// A job kept ahead, or else one from the claim stream, for a runner that spent `ran` on
    /// its last job; `Err(())` when there is no stream.
    pub(crate) async fn claim_in_round(&self, ran: Option<Duration>) -> Result<Option<Job>, ()> {
        let (claims, ahead) = match &*self.rounds.lock() {
            Some(rounds) => (rounds.claims.clone(), rounds.ahead.clone()),
            None => return Err(()),
        };
        {
            let mut ahead = ahead.lock();
            if let Some(ran) = ran {
                average(&mut ahead.job_micros, ran.as_micros() as f64);
            }
            if self.may_claim() {
                if let Some(job) = ahead.jobs.pop_front() {
                    let low = ahead.jobs.len() * 2 <= ahead.target(self.settings.concurrency);
                    drop(ahead);
                    if low {
                        let _ = claims.send(Ask::Refill);
                    }
                    return Ok(Some(job));
                }
            }
        }
        let (reply, replied) = oneshot::channel();
        claims.send(Ask::Job(reply)).map_err(|_| ())?;
        Ok(replied.await.unwrap_or(None))
    }

    /// Up to `limit` of the jobs kept ahead (for runners the dispatcher starts); none while
    /// stopping without taking more (a stop puts them back).
    pub(crate) fn take_ahead(&self, limit: usize) -> Vec<Job> {
        let Some(ahead) = self.ahead().filter(|_| self.may_claim()) else {
            return Vec::new();
        };
        let mut ahead = ahead.lock();
        let take = limit.min(ahead.jobs.len());
        ahead.jobs.drain(..take).collect()
    }

    /// Whether jobs are kept ahead, or a claim under way will keep some (a drain is not over).
    pub(crate) fn ahead_pending(&self) -> bool {
        self.ahead().is_some_and(|ahead| {
            let ahead = ahead.lock();
            !ahead.jobs.is_empty() || ahead.coming > 0 || ahead.returning > 0
        })
    }

    /// The jobs kept ahead, with their attempts (their leases are renewed with the running
    /// jobs').
    pub(crate) fn ahead_ids(&self) -> Vec<(JobId, u32)> {
        match self.ahead() {
            Some(ahead) => ahead
                .lock()
                .jobs
                .iter()
                .map(|job| (job.id, job.attempt))
                .collect(),
            None => Vec::new(),
        }
    }

    /// After a lease renewal that covered the jobs `renewed` kept ahead and found `held` (the
    /// jobs still this worker's, with their states): forgets those no longer held (rescued
    /// elsewhere: another worker may run them), and takes out and returns those whose cancel
    /// was requested (they end `cancelled` without running).
    pub(crate) fn ahead_renewed(
        &self,
        renewed: &[(JobId, u32)],
        held: &[(JobId, JobState)],
    ) -> Vec<Job> {
        let Some(ahead) = self.ahead() else {
            return Vec::new();
        };
        let state_of = |id: JobId| held.iter().find(|(held, _)| *held == id).map(|(_, s)| *s);
        let mut cancelled = Vec::new();
        ahead.lock().jobs.retain(|job| {
            if !renewed.contains(&(job.id, job.attempt)) {
                return true;
            }
            match state_of(job.id) {
                None => {
                    tracing::warn!(job = %job.id, "lease of a job claimed ahead lost; not run here");
                    false
                }
                Some(JobState::CancelRequested | JobState::Cancelling) => {
                    cancelled.push(job.clone());
                    false
                }
                Some(_) => true,
            }
        });
        cancelled
    }

    /// Puts the jobs kept ahead back to `scheduled` at their eta, without using up their
    /// attempt, for any worker to take: at a stop, once no runner is left to take them.
    pub(crate) async fn put_back_ahead(&self) {
        let Some((ahead, claiming)) = self
            .rounds
            .lock()
            .as_ref()
            .map(|r| (r.ahead.clone(), r.claiming.clone()))
        else {
            return;
        };
        // A claim still in flight may add to them: wait for it (none starts while stopping).
        let rounds = self.store.round_concurrency().max(1) as u32;
        let _all = claiming.acquire_many_owned(rounds).await;
        // The stop ends here: a few seconds of tries (a put-back of the heartbeat's may still
        // be under way, and may fail and give its jobs back), then the leases run out and any
        // rescuer takes what is left.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let jobs = {
                let mut ahead = ahead.lock();
                let count = ahead.jobs.len();
                ahead.take_to_put_back(count)
            };
            let written = self.put_back(&ahead, jobs).await;
            let done = {
                let ahead = ahead.lock();
                ahead.jobs.is_empty() && ahead.returning == 0
            };
            if done {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let pause = if written { 10 } else { 200 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let left = ahead.lock().jobs.len();
        tracing::warn!(
            jobs = left,
            "jobs claimed ahead not put back; they are rescued when their leases end"
        );
    }

    /// Puts back the jobs kept ahead since before `since`: no runner took them in time.
    pub(crate) async fn put_back_stale_ahead(&self, since: DateTime<Utc>) {
        // A stop puts back all of them itself.
        if self.is_stopping() {
            return;
        }
        let Some(ahead) = self.ahead() else {
            return;
        };
        let stale = {
            let mut ahead = ahead.lock();
            // In claim order: the stale ones are at the front.
            let count = ahead
                .jobs
                .iter()
                .take_while(|job| job.started_at.is_some_and(|at| at < since))
                .count();
            ahead.take_to_put_back(count)
        };
        // Kept ahead (and renewed) when it fails: the next beat tries again.
        self.put_back(&ahead, stale).await;
    }

    /// Back to `scheduled` at their eta, without using up the attempt (a job whose cancel was
    /// requested ends `cancelled`, with its hooks and events). When the store fails, the jobs
    /// go back to the front of `ahead` (still leased, renewed, and taken by the next runner or
    /// put back later) and `false` is returned.
    async fn put_back(&self, ahead: &Mutex<Ahead>, jobs: Vec<Job>) -> bool {
        if jobs.is_empty() {
            return true;
        }
        let now = Utc::now();
        let completions: Vec<Completion> = jobs
            .iter()
            .map(|job| Completion {
                id: job.id,
                attempt: job.attempt,
                outcome: Outcome::Snoozed { eta: job.eta },
                at: now,
            })
            .collect();
        let count = jobs.len();
        match self.store.complete_many(completions.clone()).await {
            Ok(results) => {
                for ((job, completion), result) in jobs.iter().zip(completions).zip(results) {
                    match result {
                        Ok(ended) if ended.state == JobState::Cancelled => {
                            let finished = Finished {
                                completion,
                                started_at: job.started_at,
                            };
                            recorded(self, &finished, Ok(ended)).await;
                        }
                        // Back in the queue; or refused: no longer this claim's (rescued).
                        _ => {}
                    }
                }
                tracing::debug!(jobs = count, "jobs claimed ahead put back");
                ahead.lock().returning -= count;
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, jobs = count, "putting back jobs claimed ahead failed");
                let mut ahead = ahead.lock();
                for job in jobs.into_iter().rev() {
                    ahead.jobs.push_front(job);
                }
                ahead.returning -= count;
                false
            }
        }
    }
}

/// Serves claim rounds until every sender is gone.
pub(super) async fn claim_rounds(
    engine: Arc<Engine>,
    mut wants: mpsc::UnboundedReceiver<Ask>,
    ahead: Arc<Mutex<Ahead>>,
    rounds: Arc<Semaphore>,
) {
    while let Some(first) = wants.recv().await {
        let Ok(permit) = rounds.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        // Runners that are finishing a job right now (a short handler, an outcome handed over)
        // join this claim rather than start the next: let them run, as long as more arrive.
        loop {
            let before = batch.len();
            tokio::task::yield_now().await;
            while batch.len() < CLAIM_BATCH {
                match wants.try_recv() {
                    Ok(want) => batch.push(want),
                    Err(_) => break,
                }
            }
            if batch.len() == before || batch.len() >= CLAIM_BATCH {
                break;
            }
        }
        let engine = engine.clone();
        let ahead = ahead.clone();
        tokio::spawn(async move {
            claim_round(&engine, batch, &ahead).await;
            drop(permit);
        });
    }
}

/// One claim: for the runners in `batch` (from the jobs kept ahead first), and as many more to
/// keep ahead as runners will ask for during the next claim.
async fn claim_round(engine: &Engine, batch: Vec<Ask>, ahead: &Mutex<Ahead>) {
    let mut runners: VecDeque<oneshot::Sender<Option<Job>>> = batch
        .into_iter()
        .filter_map(|ask| match ask {
            Ask::Job(reply) => Some(reply),
            Ask::Refill => None,
        })
        .collect();
    if !engine.may_claim() {
        // Stopping without taking more: the jobs kept ahead are put back.
        for runner in runners {
            hand(ahead, runner, None);
        }
        return;
    }
    let mut served = Vec::new();
    let keep = {
        let mut ahead = ahead.lock();
        while !runners.is_empty() && !ahead.jobs.is_empty() {
            if let (Some(runner), Some(job)) = (runners.pop_front(), ahead.jobs.pop_front()) {
                served.push((runner, job));
            }
        }
        // Per-queue limits count what runs; jobs kept ahead would hold places they need. And
        // a stop takes no more than its runners ask for. Claims under way count: several may
        // be in flight at once (SQLite).
        let keep = if engine.settings.queue_concurrency.is_empty() && !engine.is_stopping() {
            ahead
                .target(engine.settings.concurrency)
                .saturating_sub(ahead.jobs.len() + ahead.coming)
        } else {
            0
        };
        ahead.coming += keep;
        keep
    };
    let mut coming = Coming { ahead, keep };
    for (runner, job) in served {
        hand(ahead, runner, Some(job));
    }
    let wanted = runners.len() + keep;
    if wanted == 0 {
        return;
    }
    let started = std::time::Instant::now();
    let mut jobs = engine.claim(wanted).await.into_iter();
    for runner in runners {
        hand(ahead, runner, jobs.next());
    }
    let mut kept = ahead.lock();
    average(&mut kept.claim_micros, started.elapsed().as_micros() as f64);
    // In the same critical section as the jobs arrive: a drain sees them in one place or the
    // other, never in neither.
    kept.coming -= keep;
    coming.keep = 0;
    kept.jobs.extend(jobs);
    let stopping = engine.is_stopping() && !kept.jobs.is_empty();
    drop(kept);
    if stopping {
        // A drain's dispatcher may be waiting to see whether anything is left.
        engine.wake.notify_one();
    }
}

/// Jobs a claim under way will keep ahead, counted in `coming` until they arrive, or until the
/// claim ends without them (a panic, an aborted task): a drain must not wait for them forever.
struct Coming<'a> {
    ahead: &'a Mutex<Ahead>,
    keep: usize,
}

impl Drop for Coming<'_> {
    fn drop(&mut self) {
        if self.keep > 0 {
            self.ahead.lock().coming -= self.keep;
        }
    }
}

/// Gives a runner its next job; one whose runner is gone (aborted) is kept ahead instead.
fn hand(ahead: &Mutex<Ahead>, runner: oneshot::Sender<Option<Job>>, job: Option<Job>) {
    if let Err(Some(job)) = runner.send(job) {
        ahead.lock().jobs.push_front(job);
    }
}
