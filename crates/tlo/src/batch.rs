//! Batched store rounds for shared stores (SQLite, PostgreSQL), after River's completer.
//!
//! A runner hands its finished attempt over and goes on to its next job at once: outcomes are
//! recorded apart from the runners, many in one round (one transaction), and hooks, metrics and
//! events for each follow its recording. Runners asking for a next job are served together by
//! one claim. The two streams do not wait for each other: a claim never waits for the durable
//! commit of the outcomes before it, and outcomes pile up into larger rounds while one is in
//! flight, so the cost of a round is shared by more jobs the busier the store is.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use tlo_core::{Completion, Error, Job};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::engine::Engine;
use crate::runner::recorded;

/// Most outcomes recorded in one round.
const OUTCOME_BATCH: usize = 256;

/// Outcomes handed over and not yet recorded, at most, per slot; a runner with one more waits
/// for room. A worker thus holds at most five times its concurrency in jobs (running, or ended
/// and on their way to the store): all that its crash can make run again. Fewer cost
/// throughput on PostgreSQL (16 slots: 64 pending, 9,000 jobs/s; 32, 7,300; 16, 5,300).
const OUTCOMES_PER_SLOT: usize = 4;

/// Most runners served by one claim.
const CLAIM_BATCH: usize = 256;

/// The two streams of a running engine on a shared store.
pub(crate) struct Rounds {
    outcomes: mpsc::UnboundedSender<Finish>,
    claims: mpsc::UnboundedSender<oneshot::Sender<Option<Job>>>,
    room: Arc<Semaphore>,
}

/// A finished attempt: what its recording needs, and what follows it.
pub(crate) struct Finished {
    pub(crate) completion: Completion,
    /// When the attempt started (for the duration metric).
    pub(crate) started_at: Option<DateTime<Utc>>,
}

/// A finished attempt waiting for its round; dropped once it is recorded (or given up on).
struct Finish {
    finished: Finished,
    _pending: Pending,
}

/// Counts an outcome handed over and not yet recorded (stop and drain wait for none), and
/// holds its room.
struct Pending {
    engine: Arc<Engine>,
    _room: OwnedSemaphorePermit,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let left = self.engine.recording.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && self.engine.is_stopping() {
            // A stop, or a drain's dispatcher, may be waiting for the last outcome.
            self.engine.finished.notify_waiters();
            self.engine.wake.notify_one();
        }
    }
}

impl Rounds {
    /// Starts both streams; they end when the returned value is dropped (and their last
    /// rounds are done).
    pub(crate) fn start(engine: &Arc<Engine>) -> Rounds {
        let (outcomes, finishes) = mpsc::unbounded_channel();
        let (claims, wants) = mpsc::unbounded_channel();
        tokio::spawn(record_rounds(engine.clone(), finishes));
        tokio::spawn(claim_rounds(engine.clone(), wants));
        Rounds {
            outcomes,
            claims,
            room: Arc::new(Semaphore::new(
                OUTCOMES_PER_SLOT * engine.settings.concurrency.max(1),
            )),
        }
    }
}

impl Engine {
    /// Hands `finished` to the outcome stream; gives it back when there is none (not running,
    /// or not on a shared store).
    pub(crate) async fn hand_over(self: &Arc<Self>, finished: Finished) -> Option<Finished> {
        let (outcomes, room) = match &*self.rounds.lock() {
            Some(rounds) => (rounds.outcomes.clone(), rounds.room.clone()),
            None => return Some(finished),
        };
        let Ok(room) = room.acquire_owned().await else {
            return Some(finished);
        };
        self.recording.fetch_add(1, Ordering::AcqRel);
        let pending = Pending {
            engine: self.clone(),
            _room: room,
        };
        match outcomes.send(Finish {
            finished,
            _pending: pending,
        }) {
            Ok(()) => None,
            Err(unsent) => {
                let Finish { finished, .. } = unsent.0;
                Some(finished)
            }
        }
    }

    /// Asks the claim stream for one job; `Err(())` when there is no stream.
    pub(crate) async fn claim_in_round(&self) -> Result<Option<Job>, ()> {
        let claims = match &*self.rounds.lock() {
            Some(rounds) => rounds.claims.clone(),
            None => return Err(()),
        };
        let (reply, replied) = oneshot::channel();
        claims.send(reply).map_err(|_| ())?;
        Ok(replied.await.unwrap_or(None))
    }
}

/// Rounds in flight at once, per stream: while one waits on the database, the next batch fills.
fn rounds_in_flight(engine: &Engine) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(engine.store.round_concurrency().max(1)))
}

/// Serves outcome rounds until every sender is gone.
async fn record_rounds(engine: Arc<Engine>, mut finishes: mpsc::UnboundedReceiver<Finish>) {
    let rounds = rounds_in_flight(&engine);
    while let Some(first) = finishes.recv().await {
        let Ok(permit) = rounds.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < OUTCOME_BATCH {
            match finishes.try_recv() {
                Ok(finish) => batch.push(finish),
                Err(_) => break,
            }
        }
        let engine = engine.clone();
        tokio::spawn(async move {
            record(&engine, batch).await;
            drop(permit);
        });
    }
}

/// Records `batch` in one round, then tells hooks, metrics and listeners.
async fn record(engine: &Arc<Engine>, batch: Vec<Finish>) {
    let completions = batch
        .iter()
        .map(|f| f.finished.completion.clone())
        .collect();
    let results = match engine.store.complete_many(completions).await {
        Ok(results) => results,
        Err(err) => {
            tracing::warn!(error = %err, "recording a batch of outcomes failed");
            let message = err.to_string();
            (0..batch.len())
                .map(|_| Err(Error::store(message.clone())))
                .collect()
        }
    };
    for (finish, result) in batch.into_iter().zip(results) {
        if matches!(result, Err(Error::Store(_))) {
            // Retried with backoff: on its own, so that it holds up no other outcome.
            let engine = engine.clone();
            tokio::spawn(async move { recorded(&engine, &finish.finished, result).await });
        } else {
            recorded(engine, &finish.finished, result).await;
        }
    }
}

/// Serves claim rounds until every sender is gone.
async fn claim_rounds(
    engine: Arc<Engine>,
    mut wants: mpsc::UnboundedReceiver<oneshot::Sender<Option<Job>>>,
) {
    let rounds = rounds_in_flight(&engine);
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
        tokio::spawn(async move {
            let mut jobs = engine.claim(batch.len()).await.into_iter();
            for want in batch {
                if let Err(Some(job)) = want.send(jobs.next()) {
                    // The runner is gone (aborted): the job is rescued when its lease ends.
                    tracing::warn!(job = %job.id, "claimed job had no runner left");
                }
            }
            drop(permit);
        });
    }
}
