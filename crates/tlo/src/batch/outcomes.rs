//! The outcome stream: finished attempts handed over by runners, recorded many to a round.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use tlo_core::{Completion, Error};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::rounds_in_flight;
use crate::engine::Engine;
use crate::runner::recorded;

/// Most outcomes recorded in one round.
const OUTCOME_BATCH: usize = 256;

/// Outcomes handed over and not yet recorded, at most, per slot; a runner with one more waits
/// for room. A worker thus holds at most six times its concurrency in jobs (running, claimed
/// ahead, at most one per slot, or ended and on their way to the store): all that its crash
/// can make run again. Fewer cost throughput on PostgreSQL (16 slots: 64 pending, 9,000
/// jobs/s; 32, 7,300; 16, 5,300).
pub(super) const OUTCOMES_PER_SLOT: usize = 4;

/// A finished attempt: what its recording needs, and what follows it.
pub(crate) struct Finished {
    pub(crate) completion: Completion,
    /// When the attempt started (for the duration metric).
    pub(crate) started_at: Option<DateTime<Utc>>,
}

/// A finished attempt waiting for its round; dropped once it is recorded (or given up on).
pub(super) struct Finish {
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
}

/// Serves outcome rounds until every sender is gone.
pub(super) async fn record_rounds(
    engine: Arc<Engine>,
    mut finishes: mpsc::UnboundedReceiver<Finish>,
) {
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
