//! Store cases: each takes a fresh, empty store and panics with a clear message on failure.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, json};
use tlo_core::transition::Change;
use tlo_core::{
    CancelOutcome, ClaimRequest, Completion, Error, JobFilter, JobId, JobState, LogEntry, LogLevel,
    NewJob, Outcome, Progress, QueueDemand, Store,
};

const WORKER: &str = "worker-1";
const LEASE: Duration = Duration::from_secs(30);

/// A due job of `task` on queue `default`.
fn job(task: &str) -> NewJob {
    let mut new = NewJob::new(task, json!({"n": 1}));
    new.eta = Utc::now() - TimeDelta::seconds(1);
    new
}

fn request(queues: &[(&str, usize)], limit: usize, now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        worker: WORKER.into(),
        queues: queues
            .iter()
            .map(|(queue, limit)| QueueDemand {
                queue: (*queue).into(),
                limit: *limit,
            })
            .collect(),
        limit,
        now,
        lease: LEASE,
    }
}

async fn put<S: Store>(store: &S, jobs: Vec<NewJob>) -> Vec<JobId> {
    store
        .enqueue(jobs)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

async fn claim<S: Store>(store: &S, limit: usize) -> Vec<tlo_core::Job> {
    store
        .claim(&request(&[("default", limit)], limit, Utc::now()))
        .await
        .expect("claim")
}

async fn complete<S: Store>(
    store: &S,
    id: JobId,
    attempt: u32,
    outcome: Outcome,
) -> tlo_core::Result<tlo_core::Job> {
    store
        .complete(Completion {
            id,
            attempt,
            outcome,
            at: Utc::now(),
        })
        .await
}

async fn state<S: Store>(store: &S, id: JobId) -> JobState {
    store.get(id).await.expect("get").expect("job exists").state
}

mod lifecycle;
mod outcomes;
mod queries;
mod running;
mod submit_and_claim;

pub use lifecycle::*;
pub use outcomes::*;
pub use queries::*;
pub use running::*;
pub use submit_and_claim::*;
