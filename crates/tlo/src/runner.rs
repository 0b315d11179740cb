//! Running one job: exclusivity, the handler under timeout and grace period, the outcome.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use serde_json::Value;
use tlo_core::{Completion, Job, JobState, LogLevel, Outcome};

use crate::batch::Finished;
use crate::context::TaskContext;
use crate::engine::{Engine, StopMode};
use crate::events::{Hooks, JobEventKind};
use crate::metrics::Count;
use crate::shell::{ShellFailure, ShellRun, progress_line, run_shell};
use crate::task::{Handler, HandlerError, HandlerFuture, TaskDef};

fn elapsed_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Runs `job`, then keeps its slot for the next due job while there is one: no spawn and no
/// dispatcher wake-up per job.
pub(crate) async fn run_loop(engine: Arc<Engine>, mut job: Job) {
    loop {
        let took = std::time::Instant::now();
        let mut ran = None;
        if job.task == crate::workflow_run::COORDINATOR_TASK {
            // A coordinator mostly waits for its nodes: it runs beside the slots, so that a run
            // can never starve its own nodes of workers (think TLO_CONCURRENCY=1).
            engine
                .side_jobs
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let (side, coordinator) = (engine.clone(), job);
            tokio::spawn(async move {
                run_job(&side, coordinator, false).await;
                side.side_jobs
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                side.finished.notify_waiters();
            });
        } else {
            run_job(&engine, job, true).await;
            ran = Some(took.elapsed());
        }
        match engine.claim_next(ran).await {
            Some(next) => job = next,
            None => {
                engine.release_slot();
                return;
            }
        }
    }
}

/// Runs one claimed job to its outcome; its slot stays reserved (the caller decides).
/// With `batched`, its outcome may be handed to the outcome stream instead of waiting for its
/// recording.
async fn run_job(engine: &Arc<Engine>, mut job: Job, batched: bool) {
    let queue = job.queue.clone();
    let Some(def) = engine.registry.get(&job.task) else {
        let error = format!("unknown task `{}`", job.task);
        finish(
            engine,
            &job,
            Outcome::Failed {
                error,
                retry_at: None,
            },
            batched,
        )
        .await;
        engine.leave_queue(&queue);
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
            if engine.is_stopping() {
                engine.drain_snoozed.lock().insert(job.id);
            }
            finish(engine, &job, Outcome::Snoozed { eta }, batched).await;
            engine.leave_queue(&queue);
            return;
        }
    }
    let args = std::mem::take(&mut job.args);
    let lock_key = job.lock_key.clone();
    let ctx = TaskContext::new(job, engine.shared.clone());
    let job = &ctx.inner.job;
    engine.running.lock().insert(job.id, ctx.inner.clone());
    if engine.stop_mode() == StopMode::Cancel {
        // Claimed just as a Cancel stop collected the running jobs: stop it too, through the
        // store (running -> cancel_requested), so that its end is a legal `cancelled`.
        if let Err(err) = engine.cancel(job.id).await {
            tracing::debug!(job = %job.id, error = %err, "cancel at stop");
        }
    }
    engine.metrics.count(&job.task, Count::Started, None);
    Hooks::run(&engine.hooks.started, job);
    engine.publish(job, || JobEventKind::Started);

    let result = execute(engine, &def, ctx.clone(), args).await;
    let outcome = match result {
        Ok(value) => Outcome::Done(value),
        Err(HandlerError::Cancelled) => Outcome::Cancelled,
        // Not the job's fault: the attempt does not count.
        Err(HandlerError::Interrupted) => Outcome::Snoozed { eta: Utc::now() },
        Err(HandlerError::Forced(error) | HandlerError::Fatal(error)) => Outcome::Failed {
            error,
            retry_at: None,
        },
        Err(HandlerError::Failed(error)) => {
            let retry_at = (job.attempt < job.max_attempts)
                .then(|| Utc::now() + def.options.backoff.delay(job.attempt));
            Outcome::Failed { error, retry_at }
        }
    };
    flush(engine, &ctx).await;
    // The handler has ended: its key is free for the next holder, even one claimed in the
    // same round as this outcome.
    if let Some(key) = lock_key {
        if let Err(err) = engine.locker.release(&key, job.id).await {
            tracing::warn!(job = %job.id, error = %err, "releasing lock failed");
        }
    }
    finish(engine, job, outcome, batched).await;
    engine.running.lock().remove(&job.id);
    engine.leave_queue(&queue);
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
                run_shell(&command, run, move |level, line| {
                    match (level, progress_line(&line)) {
                        (LogLevel::Info, Some((percent, message))) => {
                            log_ctx.report_progress(percent, message)
                        }
                        _ => log_ctx.log(level, line),
                    }
                })
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
    // A workflow node may override its task's timeout.
    let timeout = ctx
        .job()
        .metadata
        .get(crate::workflow_run::TIMEOUT_KEY)
        .and_then(serde_json::Value::as_u64)
        .map(Duration::from_millis)
        .or(def.options.timeout);
    let interrupt = engine.interrupt.lock().clone();
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
        _ = interrupt.cancelled() => Err(HandlerError::Interrupted),
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

/// Records the outcome and tells hooks, metrics and listeners; with `batched`, on a shared
/// store, hands it to the outcome stream, which does that after its round.
pub(crate) async fn finish(engine: &Arc<Engine>, job: &Job, outcome: Outcome, batched: bool) {
    let finished = Finished {
        completion: Completion {
            id: job.id,
            attempt: job.attempt,
            outcome,
            at: Utc::now(),
        },
        started_at: job.started_at,
    };
    let finished = if batched {
        match engine.hand_over(finished).await {
            Some(finished) => finished,
            None => return,
        }
    } else {
        finished
    };
    let result = engine.store.complete(finished.completion.clone()).await;
    recorded(engine, &finished, result).await;
}

/// After an outcome's recording (retried after a store failure): hooks, metrics, listeners.
pub(crate) async fn recorded(engine: &Engine, finished: &Finished, result: tlo_core::Result<Job>) {
    let completion = &finished.completion;
    let ended = match result {
        Ok(ended) => ended,
        Err(err) => match record_again(engine, completion, err).await {
            Some(ended) => ended,
            None => return,
        },
    };
    let snoozed = matches!(completion.outcome, Outcome::Snoozed { .. });
    let duration = (!snoozed).then(|| {
        finished
            .started_at
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
    if ended.state == JobState::Scheduled {
        // Back in the queue (a retry, a snooze): the dispatcher may have a slot for it.
        engine.wake.notify_one();
    }
    engine.metrics.count(&ended.task, count, duration);
    Hooks::run(hook_list, &ended);
    announce(engine, &ended, snoozed);
    if ended.state.is_end() && crate::process::is_ephemeral(&ended) {
        crate::process::forget_ephemeral(engine, &ended);
    }
}

/// Retries recording an outcome after a store failure (a lost connection, a deadlock victim):
/// giving up would leave the job `running` until its lease ran out and run it again.
async fn record_again(
    engine: &Engine,
    completion: &Completion,
    mut error: tlo_core::Error,
) -> Option<Job> {
    for attempt in 0..8u32 {
        if !matches!(error, tlo_core::Error::Store(_) | tlo_core::Error::Shutdown) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
        match engine.store.complete(completion.clone()).await {
            Ok(ended) => return Some(ended),
            Err(err) => error = err,
        }
    }
    tracing::warn!(job = %completion.id, error = %error, "recording the outcome failed");
    None
}

fn announce(engine: &Engine, ended: &Job, snoozed: bool) {
    if ended.state.is_end() {
        if let Some(parent) = ended.parent {
            let coordinators = engine.coordinators.lock();
            if let Some(coordinator) = coordinators.get(&parent) {
                let _ = coordinator.send(ended.clone());
            }
        }
    }
    engine.publish(ended, || match ended.state {
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
