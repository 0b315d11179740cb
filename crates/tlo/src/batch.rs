//! Batched rounds for shared stores: runners that finish at about the same time share one store
//! round (one transaction) that records their outcomes and claims their next jobs.

use std::sync::Arc;

use tlo_core::{Completion, Error, Job, Result};
use tokio::sync::{mpsc, oneshot};

use crate::engine::Engine;

/// Most runners served by one round.
const BATCH: usize = 64;

/// One runner's finished attempt, waiting for its round.
pub(crate) struct Finish {
    pub(crate) completion: Completion,
    pub(crate) reply: oneshot::Sender<(Result<Job>, Option<Job>)>,
}

/// Serves rounds until every sender is gone.
pub(crate) async fn batcher(engine: Arc<Engine>, mut finishes: mpsc::UnboundedReceiver<Finish>) {
    // Rounds in flight at once: while one waits on the database, the next batch fills.
    let rounds = Arc::new(tokio::sync::Semaphore::new(
        engine.store.round_concurrency().max(1),
    ));
    while let Some(first) = finishes.recv().await {
        let Ok(permit) = rounds.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match finishes.try_recv() {
                Ok(finish) => batch.push(finish),
                Err(_) => break,
            }
        }
        let engine = engine.clone();
        tokio::spawn(async move {
            round(&engine, batch).await;
            drop(permit);
        });
    }
}

/// One store round for `batch`.
async fn round(engine: &Engine, batch: Vec<Finish>) {
    let next = engine.plain_claim_request(batch.len());
    let completions = batch.iter().map(|f| f.completion.clone()).collect();
    match engine
        .store
        .complete_and_claim(completions, next.as_ref())
        .await
    {
        Ok((results, claimed)) => {
            engine.note_claimed(&claimed);
            let mut claimed = claimed.into_iter();
            for (finish, result) in batch.into_iter().zip(results) {
                if let Err((_, Some(job))) = finish.reply.send((result, claimed.next())) {
                    // The runner is gone (aborted): its claimed job will be rescued when
                    // its lease runs out.
                    tracing::warn!(job = %job.id, "claimed job had no runner left");
                }
            }
        }
        Err(err) => {
            let message = err.to_string();
            tracing::warn!(error = %message, "recording a batch of outcomes failed");
            for finish in batch {
                let _ = finish
                    .reply
                    .send((Err(Error::store(message.clone())), None));
            }
        }
    }
}
