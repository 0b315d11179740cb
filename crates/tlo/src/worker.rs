//! Workers: claim due jobs, run their handlers, record how they ended.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde_json::Value;
use tlo_core::{ClaimRequest, Completion, Job, JobState, Outcome, QueueDemand};

use crate::context::TaskContext;
use crate::engine::Engine;
use crate::events::{Hooks, JobEventKind};
use crate::metrics::Count;
use crate::settings::StopBehavior;
use crate::shell::{ShellFailure, ShellRun, run_shell};
use crate::task::{Handler, HandlerError, HandlerFuture, TaskDef};

/// Most jobs taken in one claim.
const CLAIM_BATCH: usize = 256;

fn elapsed_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The dispatcher: claims jobs while there are free slots, spawns one task per job.
pub(crate) async fn dispatch(engine: Arc<Engine>) {
    let mut stop = engine.stop.subscribe();
    let concurrency = engine.settings.concurrency;
    let mut queues = engine.served_queues();
    let mut queues_version = engine.queues_version.load(Ordering::Acquire);
    let mut drain_since: Option<DateTime<Utc>> = None;
    loop {
        match *stop.borrow_and_update() {
            Some(StopBehavior::Cancel | StopBehavior::Ignore) => break,
            Some(StopBehavior::Drain) if drain_since.is_none() => drain_since = Some(Utc::now()),
            _ => {}
        }
        let version = engine.queues_version.load(Ordering::Acquire);
        if version != queues_version {
            queues = engine.served_queues();
            queues_version = version;
        }
        let free = concurrency.saturating_sub(engine.in_flight.load(Ordering::Acquire));
        if free > 0 {
            let snoozed_pending = !engine.drain_snoozed.lock().is_empty();
            let now = match drain_since {
                Some(since) if !snoozed_pending => since,
                _ => Utc::now(),
            };
            let request = ClaimRequest {
                worker: engine.worker_id.clone(),
                queues: demands(&engine, &queues, free),
                limit: free.min(CLAIM_BATCH),
                now,
                lease: engine.settings.lease,
            };
            match engine.store.claim(&request).await {
                Ok(jobs) if !jobs.is_empty() => {
                    for job in jobs {
                        start(&engine, job);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "claiming jobs failed; retrying"),
            }
        }
        if let Some(since) = drain_since {
            if drained(&engine, &queues, since).await {
                break;
            }
        }
        let wait = if free > 0 {
            match engine.store.next_eta(&queues).await {
                Ok(Some(eta)) => (eta - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(engine.settings.poll_interval),
                _ => engine.settings.poll_interval,
            }
        } else {
            engine.settings.poll_interval
        };
        if wait.is_zero() && free > 0 && drain_since.is_none() {
            // A job is due but was not claimable (its queue is at its limit): wait for a slot.
            tokio::select! {
                _ = engine.wake.notified() => {}
                _ = tokio::time::sleep(engine.settings.poll_interval) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        tokio::select! {
            _ = engine.wake.notified() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Per-queue demands for `free` slots, honouring per-queue limits.
fn demands(engine: &Engine, queues: &[String], free: usize) -> Vec<QueueDemand> {
    let limits = &engine.settings.queue_concurrency;
    let in_flight = (!limits.is_empty()).then(|| engine.queue_in_flight.lock().clone());
    queues
        .iter()
        .map(|queue| {
            let limit = match (limits.get(queue), &in_flight) {
                (Some(&cap), Some(counts)) => {
                    cap.saturating_sub(counts.get(queue).copied().unwrap_or(0))
                }
                _ => free,
            };
            QueueDemand {
                queue: queue.clone(),
                limit: limit.min(free),
            }
        })
        .collect()
}

/// A drain is over when nothing runs here and nothing that was due at `since` is left.
async fn drained(engine: &Engine, queues: &[String], since: DateTime<Utc>) -> bool {
    if engine.in_flight.load(Ordering::Acquire) > 0 {
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
    matches!(engine.store.count_due(queues, since).await, Ok(0))
}

fn start(engine: &Arc<Engine>, job: Job) {
    engine.in_flight.fetch_add(1, Ordering::AcqRel);
    if !engine.settings.queue_concurrency.is_empty() {
        *engine
            .queue_in_flight
            .lock()
            .entry(job.queue.clone())
            .or_default() += 1;
    }
    engine.drain_snoozed.lock().remove(&job.id);
    tokio::spawn(run_job(engine.clone(), job));
}

fn release_slot(engine: &Engine, queue: &str) {
    if !engine.settings.queue_concurrency.is_empty() {
        if let Some(count) = engine.queue_in_flight.lock().get_mut(queue) {
            *count = count.saturating_sub(1);
        }
    }
    engine.in_flight.fetch_sub(1, Ordering::AcqRel);
    engine.wake.notify_one();
    engine.finished.notify_waiters();
}

async fn run_job(engine: Arc<Engine>, mut job: Job) {
    let queue = job.queue.clone();
    let Some(def) = engine.registry.get(&job.task) else {
        let error = format!("unknown task `{}`", job.task);
        finish(
            &engine,
            &job,
            Outcome::Failed {
                error,
                retry_at: None,
            },
        )
        .await;
        release_slot(&engine, &queue);
        return;
    };
    if let Some(key) = job.lock_key.clone() {
        let acquired = engine
            .locker
            .try_acquire(&key, job.id, engine.settings.lease)
            .await;
        if !matches!(acquired, Ok(true)) {
            if let Err(err) = acquired {
                tracing::warn!(job = %job.id, error = %err, "locker failed; job put back");
            }
            let eta = Utc::now() + engine.settings.tick_interval;
            if engine.stop.borrow().is_some() {
                engine.drain_snoozed.lock().insert(job.id);
            }
            finish(&engine, &job, Outcome::Snoozed { eta }).await;
            release_slot(&engine, &queue);
            return;
        }
    }
    let args = std::mem::take(&mut job.args);
    let lock_key = job.lock_key.clone();
    let ctx = TaskContext::new(job, engine.services.clone());
    let job = &ctx.inner.job;
    engine.running.lock().insert(job.id, ctx.inner.clone());
    engine.metrics.count(&job.task, Count::Started, None);
    Hooks::run(&engine.hooks.started, job);
    engine.publish(job, || JobEventKind::Started);

    let result = execute(&engine, &def, ctx.clone(), args).await;
    let outcome = match result {
        Ok(value) => Outcome::Done(value),
        Err(HandlerError::Cancelled) => Outcome::Cancelled,
        Err(HandlerError::Forced(error)) => Outcome::Failed {
            error,
            retry_at: None,
        },
        Err(HandlerError::Failed(error)) => {
            let retry_at = (job.attempt < job.max_attempts)
                .then(|| Utc::now() + def.options.backoff.delay(job.attempt));
            Outcome::Failed { error, retry_at }
        }
    };
    flush(&engine, &ctx).await;
    finish(&engine, job, outcome).await;
    if let Some(key) = lock_key {
        if let Err(err) = engine.locker.release(&key, job.id).await {
            tracing::warn!(job = %job.id, error = %err, "releasing lock failed");
        }
    }
    engine.running.lock().remove(&job.id);
    release_slot(&engine, &queue);
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    format!("handler panicked: {text}")
}

/// Runs the handler under its timeout and the cancellation grace period.
async fn execute(
    engine: &Arc<Engine>,
    def: &Arc<TaskDef>,
    ctx: TaskContext,
    args: Value,
) -> Result<Value, HandlerError> {
    let grace = engine.settings.cancel_grace;
    let (handler, forced_after): (HandlerFuture, Duration) = match &def.handler {
        Handler::Async(f) => {
            let fut = AssertUnwindSafe(f(ctx.clone(), args)).catch_unwind();
            (
                Box::pin(
                    fut.map(|r| r.unwrap_or_else(|p| Err(HandlerError::Failed(panic_message(p))))),
                ),
                grace,
            )
        }
        Handler::Blocking(f) => {
            let (f, ctx, pool) = (f.clone(), ctx.clone(), engine.blocking.clone());
            let fut = async move {
                let permit = pool
                    .acquire_owned()
                    .await
                    .map_err(|_| HandlerError::Failed("blocking pool closed".into()))?;
                let joined = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    f(ctx, args)
                })
                .await;
                match joined {
                    Ok(result) => result,
                    Err(err) if err.is_panic() => {
                        Err(HandlerError::Failed(panic_message(err.into_panic())))
                    }
                    Err(err) => Err(HandlerError::Failed(err.to_string())),
                }
            };
            (Box::pin(fut), grace)
        }
        Handler::Shell(command) => {
            let (command, ctx, task) = (command.clone(), ctx.clone(), def.name.clone());
            let fut = async move {
                let run = ShellRun {
                    task: &task,
                    job_id: ctx.job_id().to_string(),
                    attempt: ctx.attempt(),
                    args: &args,
                    cancel: ctx.inner.cancel.clone(),
                    grace,
                };
                let log_ctx = ctx.clone();
                run_shell(&command, run, move |level, line| log_ctx.log(level, line))
                    .await
                    .map_err(|failure| match failure {
                        ShellFailure::Failed(error) => HandlerError::Failed(error),
                        ShellFailure::Cancelled => HandlerError::Cancelled,
                        ShellFailure::Forced(error) => HandlerError::Forced(error),
                    })
            };
            // The runner escalates SIGTERM to SIGKILL itself; give it time to report.
            (Box::pin(fut), grace + Duration::from_secs(1))
        }
    };
    let timeout = def.options.timeout;
    let cancel = ctx.inner.cancel.clone();
    let forced = async {
        cancel.cancelled().await;
        let job = ctx.job();
        if let Err(err) = engine.store.acknowledge_cancel(job.id, job.attempt).await {
            tracing::debug!(job = %job.id, error = %err, "acknowledging cancel");
        }
        tokio::time::sleep(forced_after).await;
    };
    tokio::select! {
        biased;
        result = handler => result,
        _ = async { match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        } } => Err(HandlerError::Failed(format!("Timeout after {}", elapsed_secs(timeout.unwrap_or_default())))),
        _ = forced => Err(HandlerError::Forced(format!(
            "did not unwind within the grace period of {}; forced to stop",
            elapsed_secs(grace)
        ))),
    }
}

/// Writes buffered progress and log lines of a running job.
pub(crate) async fn flush(engine: &Engine, ctx: &TaskContext) {
    let job = ctx.job();
    let Some(flush) = ctx.inner.reporter.take(job.attempt) else {
        return;
    };
    if !flush.logs.is_empty() {
        if let Err(err) = engine.store.append_logs(job.id, flush.logs).await {
            tracing::warn!(job = %job.id, error = %err, "writing job log failed");
        }
    }
    if let Some(progress) = flush.progress {
        match engine
            .store
            .set_progress(job.id, job.attempt, progress.clone())
            .await
        {
            Ok(()) => engine.publish(job, || JobEventKind::Progress { progress }),
            Err(err) => tracing::debug!(job = %job.id, error = %err, "progress not written"),
        }
    }
}

/// Records the outcome and tells hooks, metrics and listeners.
async fn finish(engine: &Engine, job: &Job, outcome: Outcome) {
    let completion = Completion {
        id: job.id,
        attempt: job.attempt,
        outcome,
        at: Utc::now(),
    };
    let snoozed = matches!(completion.outcome, Outcome::Snoozed { .. });
    let ended = match engine.store.complete(completion).await {
        Ok(ended) => ended,
        Err(err) => {
            tracing::warn!(job = %job.id, error = %err, "recording the outcome failed");
            return;
        }
    };
    let duration = (!snoozed).then(|| {
        job.started_at
            .and_then(|start| (Utc::now() - start).to_std().ok())
            .unwrap_or_default()
    });
    let hooks = &engine.hooks;
    let (count, hook_list) = match ended.state {
        JobState::Done => (Count::Succeeded, &hooks.succeeded),
        JobState::Failed => (Count::Failed, &hooks.failed),
        JobState::Cancelled => (Count::Cancelled, &hooks.cancelled),
        JobState::Scheduled if snoozed => (Count::Snoozed, &Vec::new()),
        _ => (Count::Retried, &hooks.retried),
    };
    engine.metrics.count(&ended.task, count, duration);
    Hooks::run(hook_list, &ended);
    engine.publish(&ended, || match ended.state {
        JobState::Done => JobEventKind::Succeeded,
        JobState::Failed => JobEventKind::Failed {
            error: ended.error.clone().unwrap_or_default(),
        },
        JobState::Cancelled => JobEventKind::Cancelled,
        _ if snoozed => JobEventKind::Snoozed { eta: ended.eta },
        _ => JobEventKind::Retried {
            error: ended.error.clone().unwrap_or_default(),
            eta: ended.eta,
        },
    });
}

/// Renews leases and locks of running jobs, and picks up cancels requested elsewhere.
pub(crate) async fn heartbeat(engine: Arc<Engine>) {
    let every = (engine.settings.lease / 3).min(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let running: Vec<_> = engine.running.lock().values().cloned().collect();
        if running.is_empty() {
            continue;
        }
        let ids: Vec<_> = running.iter().map(|c| (c.job.id, c.job.attempt)).collect();
        let until = Utc::now() + engine.settings.lease;
        match engine
            .store
            .renew_leases(&engine.worker_id, &ids, until)
            .await
        {
            Ok(states) => {
                for (id, state) in states {
                    if matches!(state, JobState::CancelRequested | JobState::Cancelling) {
                        if let Some(ctx) = running.iter().find(|c| c.job.id == id) {
                            ctx.cancel.cancel();
                        }
                    }
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
    let mut ticker =
        tokio::time::interval((engine.settings.lease / 2).max(Duration::from_millis(100)));
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
