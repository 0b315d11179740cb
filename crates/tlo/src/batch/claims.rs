//! The claim stream: runners asking for their next job, served together, and the jobs
//! claimed [ahead](Ahead) of them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tlo_core::{Completion, Job, JobId, Outcome};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::engine::Engine;

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
}

impl Ahead {
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
    /// A job kept ahead, or else one from the claim stream, for a runner that spent `ran` on
    /// its last job; `Err(())` when there is no stream.
    pub(crate) async fn claim_in_round(&self, ran: Option<Duration>) -> Result<Option<Job>, ()> {
        let (claims, ahead) = match &*self.rounds.lock() {
            Some(rounds) => (rounds.claims.clone(), rounds.ahead.clone()),
            None => return Err(()),
        };
        if self.may_claim() {
            let mut ahead = ahead.lock();
            if let Some(ran) = ran {
                average(&mut ahead.job_micros, ran.as_micros() as f64);
            }
            if let Some(job) = ahead.jobs.pop_front() {
                let low = ahead.jobs.len() * 2 <= ahead.target(self.settings.concurrency);
                drop(ahead);
                if low {
                    let _ = claims.send(Ask::Refill);
                }
                return Ok(Some(job));
            }
        }
        let (reply, replied) = oneshot::channel();
        claims.send(Ask::Job(reply)).map_err(|_| ())?;
        Ok(replied.await.unwrap_or(None))
    }

    /// Up to `limit` of the jobs kept ahead (for runners the dispatcher starts).
    pub(crate) fn take_ahead(&self, limit: usize) -> Vec<Job> {
        let Some(ahead) = self.rounds.lock().as_ref().map(|r| r.ahead.clone()) else {
            return Vec::new();
        };
        let mut ahead = ahead.lock();
        let take = limit.min(ahead.jobs.len());
        ahead.jobs.drain(..take).collect()
    }

    /// The jobs kept ahead, with their attempts (their leases are renewed with the running
    /// jobs').
    pub(crate) fn ahead_ids(&self) -> Vec<(JobId, u32)> {
        match &*self.rounds.lock() {
            Some(rounds) => rounds
                .ahead
                .lock()
                .jobs
                .iter()
                .map(|job| (job.id, job.attempt))
                .collect(),
            None => Vec::new(),
        }
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
        let jobs: Vec<Job> = ahead.lock().jobs.drain(..).collect();
        self.put_back(jobs).await;
    }

    /// Puts back the jobs kept ahead since before `since`: no runner took them in time.
    pub(crate) async fn put_back_stale_ahead(&self, since: DateTime<Utc>) {
        let Some(ahead) = self.rounds.lock().as_ref().map(|r| r.ahead.clone()) else {
            return;
        };
        let stale: Vec<Job> = {
            let mut ahead = ahead.lock();
            // In claim order: the stale ones are at the front.
            let count = ahead
                .jobs
                .iter()
                .take_while(|job| job.started_at.is_some_and(|at| at < since))
                .count();
            ahead.jobs.drain(..count).collect()
        };
        self.put_back(stale).await;
    }

    /// Back to `scheduled` at their eta, without using up the attempt.
    async fn put_back(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let now = Utc::now();
        let completions = jobs
            .iter()
            .map(|job| Completion {
                id: job.id,
                attempt: job.attempt,
                outcome: Outcome::Snoozed { eta: job.eta },
                at: now,
            })
            .collect();
        match self.store.complete_many(completions).await {
            Ok(results) => {
                let failed = results.iter().filter(|r| r.is_err()).count();
                tracing::debug!(jobs = jobs.len(), failed, "jobs claimed ahead put back");
            }
            // Still leased to this worker: the rescuer of any worker puts them back.
            Err(err) => tracing::warn!(
                error = %err,
                jobs = jobs.len(),
                "putting back jobs claimed ahead failed; they are rescued when their leases end"
            ),
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
/// keep ahead as runners asked for during the last claim.
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
            hand(runner, None);
        }
        return;
    }
    let wanted = {
        let mut ahead = ahead.lock();
        while !ahead.jobs.is_empty() && !runners.is_empty() {
            if let (Some(runner), Some(job)) = (runners.pop_front(), ahead.jobs.pop_front()) {
                hand(runner, Some(job));
            }
        }
        // Per-queue limits count what runs; jobs kept ahead would hold places they need. And
        // a stop takes no more than its runners ask for.
        let keep = if engine.settings.queue_concurrency.is_empty() && !engine.is_stopping() {
            ahead
                .target(engine.settings.concurrency)
                .saturating_sub(ahead.jobs.len())
        } else {
            0
        };
        runners.len() + keep
    };
    if wanted == 0 {
        return;
    }
    let started = std::time::Instant::now();
    let mut jobs = engine.claim(wanted).await.into_iter();
    for runner in runners {
        hand(runner, jobs.next());
    }
    let mut ahead = ahead.lock();
    average(
        &mut ahead.claim_micros,
        started.elapsed().as_micros() as f64,
    );
    ahead.jobs.extend(jobs);
}

/// Gives a runner its next job.
fn hand(runner: oneshot::Sender<Option<Job>>, job: Option<Job>) {
    if let Err(Some(job)) = runner.send(job) {
        // The runner is gone (aborted): the job is rescued when its lease ends.
        tracing::warn!(job = %job.id, "claimed job had no runner left");
    }
}
