//! Background duties of a running orchestrator: leases, rescue, progress flushing.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tlo_core::{JobState, Outcome};

use crate::context::TaskContext;
use crate::engine::Engine;
use crate::runner::{finish, flush};

/// Renews leases and locks of running jobs, and picks up cancels requested elsewhere.
pub(crate) async fn heartbeat(engine: Arc<Engine>) {
    // Also how soon a cancel requested by another process reaches the job here.
    let every = engine.settings.heartbeat_interval();
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        // Jobs claimed ahead that no runner took since the last beat go back to the queue
        // (on a task of its own: a slow store must not hold up the renewals).
        let stale = Utc::now() - chrono::Duration::from_std(every).unwrap_or_default();
        let putting_back = engine.clone();
        tokio::spawn(async move { putting_back.put_back_stale_ahead(stale).await });
        let running: Vec<_> = engine.running.lock().values().cloned().collect();
        let mut ids: Vec<_> = running.iter().map(|c| (c.job.id, c.job.attempt)).collect();
        // Jobs claimed ahead are leased alike.
        let ahead = engine.ahead_ids();
        ids.extend(ahead.iter().copied());
        if ids.is_empty() {
            continue;
        }
        let until = Utc::now() + engine.settings.lease;
        match engine
            .store
            .renew_leases(&engine.worker_id, &ids, until)
            .await
        {
            Ok(states) => {
                for (id, state) in &states {
                    if matches!(state, JobState::CancelRequested | JobState::Cancelling) {
                        if let Some(ctx) = running.iter().find(|c| c.job.id == *id) {
                            ctx.cancel.cancel();
                        }
                    }
                }
                // A job claimed ahead whose cancel was requested ends without running.
                for job in engine.ahead_renewed(&ahead, &states) {
                    let engine = engine.clone();
                    tokio::spawn(async move {
                        finish(&engine, &job, Outcome::Cancelled, true).await;
                    });
                }
            }
            Err(err) => tracing::warn!(error = %err, "renewing leases failed"),
        }
        for ctx in &running {
            if let Some(key) = &ctx.job.lock_key {
                let _ = engine
                    .locker
                    .renew(key, ctx.job.id, engine.settings.lease)
                    .await;
            }
        }
    }
}

/// Puts back jobs whose worker vanished.
pub(crate) async fn rescuer(engine: Arc<Engine>) {
    let mut ticker = tokio::time::interval(engine.settings.rescue_interval());
    loop {
        ticker.tick().await;
        match engine.store.rescue_expired(Utc::now()).await {
            Ok(rescued) => {
                for job in rescued {
                    tracing::warn!(job = %job.id, state = %job.state, "rescued a job whose worker vanished");
                    engine.wake.notify_one();
                }
            }
            Err(err) => tracing::warn!(error = %err, "rescuing expired jobs failed"),
        }
    }
}

/// Flushes buffered progress and logs of running jobs every flush interval.
pub(crate) async fn flusher(engine: Arc<Engine>) {
    let mut ticker = tokio::time::interval(engine.settings.progress_flush_interval);
    loop {
        ticker.tick().await;
        let running: Vec<_> = engine.running.lock().values().cloned().collect();
        for inner in running {
            flush(&engine, &TaskContext { inner }).await;
        }
    }
}

/// Most jobs deleted per store call, so pruning never holds the store for long.
const PRUNE_BATCH: usize = 1000;

/// Deletes ended jobs older than their state's retention, every minute (first at start).
pub(crate) async fn pruner(engine: Arc<Engine>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        ticker.tick().await;
        for state in [
            JobState::Done,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Skipped,
        ] {
            let Some(keep) = engine.settings.retention(state) else {
                continue;
            };
            let Ok(keep) = chrono::Duration::from_std(keep) else {
                continue;
            };
            let before = Utc::now() - keep;
            loop {
                match engine.store.prune(state, before, PRUNE_BATCH).await {
                    Ok(pruned) if pruned > 0 => {
                        tracing::debug!(%state, pruned, "pruned ended jobs");
                        if pruned < PRUNE_BATCH {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    Ok(_) => break,
                    Err(err) => {
                        tracing::warn!(%state, error = %err, "pruning failed");
                        break;
                    }
                }
            }
        }
    }
}
