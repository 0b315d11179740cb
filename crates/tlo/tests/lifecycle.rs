//! Orchestrator lifecycle: stop behaviours, hooks, event stream, metrics, settings layering.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use tlo::{Error, JobFilter, JobState, StopBehavior, SubmitOptions, TaskOptions, Tlo};

fn sleeper(tlo: &Tlo, millis: u64) -> tlo::TaskRef<(), ()> {
    tlo.register("sleep", TaskOptions::new(), move |ctx, _: ()| async move {
        tokio::select! {
            _ = tokio::time::sleep(ms(millis)) => Ok(()),
            _ = ctx.cancelled() => Err("interrupted".to_string()),
        }
    })
    .unwrap()
}

async fn states(tlo: &Tlo) -> Vec<JobState> {
    let mut states: Vec<_> = tlo
        .jobs(&JobFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.state)
        .collect();
    states.sort();
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_running_and_due_jobs_and_leaves_later_ones() {
    let tlo = tlo_with(fast().concurrency(2));
    let t = sleeper(&tlo, 100);
    tlo.submit_batch(&t, vec![(); 5]).await.unwrap();
    let later = tlo
        .submit_with(&t, (), SubmitOptions::new().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    tlo.start().unwrap();
    tokio::time::sleep(ms(30)).await;
    tlo.stop_with(StopBehavior::Drain).await.unwrap();
    let done = tlo
        .jobs(&JobFilter::default().state(JobState::Done))
        .await
        .unwrap();
    assert_eq!(done.len(), 5);
    assert_eq!(later.state().await.unwrap(), JobState::Scheduled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stop_cancels_running_and_queued_jobs_of_the_memory_store() {
    let tlo = tlo_with(fast().concurrency(2));
    let t = sleeper(&tlo, 10_000);
    tlo.submit_batch(&t, vec![(); 5]).await.unwrap();
    tlo.start().unwrap();
    eventually("two running", || async {
        tlo.jobs(&JobFilter::default().state(JobState::Running))
            .await
            .unwrap()
            .len()
            == 2
    })
    .await;
    let started = std::time::Instant::now();
    tlo.stop_with(StopBehavior::Cancel).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(states(&tlo).await, vec![JobState::Cancelled; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_stop_puts_jobs_still_running_back_without_using_an_attempt() {
    let dir = std::env::temp_dir().join(format!("tlo-forced-stop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for behavior in [StopBehavior::Drain, StopBehavior::Cancel] {
        let sqlite = tlo::SqliteStore::open(dir.join(format!("{behavior:?}.db"))).unwrap();
        for tlo in [tlo(), build(Tlo::builder().settings(fast()).store(sqlite))] {
            let store = tlo.store().name();
            let runs = Arc::new(AtomicUsize::new(0));
            let counter = runs.clone();
            // Not cancellable, and endless on its first run: only a forced stop ends it.
            let stubborn = tlo
                .register(
                    "stubborn",
                    TaskOptions::new().cancellable(false),
                    move |_ctx, _: ()| {
                        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
                        async move {
                            if first {
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, String>(())
                        }
                    },
                )
                .unwrap();
            tlo.start().unwrap();
            let job = tlo.submit(&stubborn, ()).await.unwrap();
            eventually("the job runs", || async {
                job.state().await.unwrap() == JobState::Running
            })
            .await;
            assert!(
                force_a_stop(&tlo, behavior, ms(300)).await,
                "{store} {behavior:?}: the stop waits"
            );
            let back = tlo.job(job.id()).await.unwrap();
            assert_eq!(
                (back.state, back.attempt),
                (JobState::Scheduled, 0),
                "{store} {behavior:?}: back in the queue, the attempt not counted"
            );
            tlo.start().unwrap();
            let ended = tokio::time::timeout(Duration::from_secs(5), job.wait())
                .await
                .expect("runs again")
                .unwrap();
            assert_eq!(ended.state, JobState::Done, "{store} {behavior:?}");
            assert_eq!(runs.load(Ordering::SeqCst), 2, "{store} {behavior:?}");
            tlo.stop().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_on_sqlite_returns_once_every_outcome_is_recorded() {
    let dir = std::env::temp_dir().join(format!("tlo-stop-outcomes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for behavior in [StopBehavior::Drain, StopBehavior::Ignore] {
        let sqlite = tlo::SqliteStore::open(dir.join(format!("{behavior:?}.db"))).unwrap();
        let tlo = build(
            Tlo::builder()
                .settings(fast().concurrency(16))
                .store(sqlite),
        );
        assert_a_stop_records_every_outcome(&tlo, behavior).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_stop_leaves_the_queue_as_it_is() {
    let tlo = tlo_with(fast().concurrency(1));
    let t = sleeper(&tlo, 100);
    tlo.submit_batch(&t, vec![(); 4]).await.unwrap();
    tlo.start().unwrap();
    eventually("one running", || async {
        states(&tlo).await.contains(&JobState::Running)
    })
    .await;
    tlo.stop_with(StopBehavior::Ignore).await.unwrap();
    let states = states(&tlo).await;
    assert_eq!(
        states,
        vec![
            JobState::Scheduled,
            JobState::Scheduled,
            JobState::Scheduled,
            JobState::Done
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_events_and_metrics_see_every_outcome() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let hook = |name: &'static str| {
        let calls = calls.clone();
        move |job: &tlo::Job| calls.lock().push(format!("{name}:{}", job.task))
    };
    let tlo = build(
        Tlo::builder()
            .settings(fast())
            .on_task_started(hook("started"))
            .on_task_succeeded(hook("succeeded"))
            .on_task_failed(hook("failed"))
            .on_task_retried(hook("retried"))
            .on_task_cancelled(hook("cancelled")),
    );
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let ok = tlo
        .register("ok", TaskOptions::new(), |_ctx, _: ()| async {
            Ok::<_, String>(())
        })
        .unwrap();
    let flaky = tlo
        .register(
            "flaky",
            TaskOptions::new()
                .max_attempts(2)
                .backoff(tlo::Backoff::fixed(ms(10))),
            move |_ctx, _: ()| {
                let n = a.fetch_add(1, Ordering::SeqCst);
                async move { Err::<(), _>(if n == 0 { "first" } else { "second" }) }
            },
        )
        .unwrap();
    let mut events = tlo.events();
    tlo.start().unwrap();
    tlo.submit(&ok, ()).await.unwrap().wait().await.unwrap();
    tlo.submit(&flaky, ()).await.unwrap().wait().await.unwrap();
    let later = tlo
        .submit_with(&ok, (), SubmitOptions::new().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    later.cancel().await.unwrap();
    tlo.stop().await.unwrap();

    let calls = calls.lock().clone();
    for expected in [
        "started:ok",
        "succeeded:ok",
        "started:flaky",
        "retried:flaky",
        "failed:flaky",
        "cancelled:ok",
    ] {
        assert!(
            calls.contains(&expected.to_string()),
            "{expected} in {calls:?}"
        );
    }
    let mut seen = Vec::new();
    let mut firsts: HashMap<tlo::JobId, (tlo::JobEventKind, JobState)> = HashMap::new();
    while let Ok(Some(event)) = tokio::time::timeout(ms(50), events.next()).await {
        firsts
            .entry(event.job)
            .or_insert((event.kind.clone(), event.state));
        seen.push((event.task, event.state));
    }
    // Each job's first event is its enqueue, in the state it was stored in.
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    for first in firsts.values() {
        assert_eq!(first, &(tlo::JobEventKind::Enqueued, JobState::Scheduled));
    }
    assert!(firsts.contains_key(&later.id()));
    assert!(
        seen.contains(&("flaky".into(), JobState::Failed)),
        "{seen:?}"
    );
    assert!(seen.contains(&("ok".into(), JobState::Done)), "{seen:?}");
    let metrics = tlo.metrics();
    let ok = &metrics.tasks["ok"];
    assert_eq!((ok.enqueued, ok.succeeded, ok.cancelled), (2, 1, 1));
    let flaky = &metrics.tasks["flaky"];
    assert_eq!((flaky.started, flaky.retried, flaky.failed), (2, 1, 1));
    assert_eq!(flaky.duration.count, 2);
    assert!(flaky.duration.p99_s >= flaky.duration.p50_s);
}

#[test]
fn settings_layer_builder_over_environment_over_defaults() {
    let env = |name: &str| match name {
        "TLO_CONCURRENCY" => Some("4".to_string()),
        "TLO_DEFAULT_QUEUE" => Some("from-env".to_string()),
        _ => None,
    };
    let tlo = Tlo::builder()
        .settings(tlo::SettingsBuilder::default().concurrency(9))
        .build_with_env(env)
        .unwrap();
    let settings = tlo.settings();
    assert_eq!(settings.concurrency, 9, "builder wins");
    assert_eq!(settings.default_queue, "from-env", "env beats default");
    assert_eq!(settings.tick_interval, Duration::from_secs(1), "default");

    let bad = |name: &str| (name == "TLO_STOP_BEHAVIOR").then(|| "Explode".to_string());
    let err = Tlo::builder().build_with_env(bad).unwrap_err();
    match err {
        Error::InvalidSetting {
            name,
            value,
            expected,
        } => {
            assert_eq!(
                (name.as_str(), value.as_str()),
                ("TLO_STOP_BEHAVIOR", "Explode")
            );
            assert!(
                expected.contains("Drain") && expected.contains("Ignore"),
                "{expected}"
            );
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_schedule_fires_on_the_first_tick_and_never_overlaps() {
    let tlo = tlo_with(fast().tick_interval(ms(20)));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    tlo.register(
        "heartbeat",
        TaskOptions::new().schedule(tlo::Schedule::every(ms(50)).unwrap()),
        move |_ctx, _: serde_json::Value| {
            r.fetch_add(1, Ordering::SeqCst);
            let gate = rx.lock().take();
            async move {
                if let Some(gate) = gate {
                    let _ = gate.await; // the first run blocks for a while
                }
                Ok::<_, String>(())
            }
        },
    )
    .unwrap();
    tlo.start().unwrap();
    eventually("first run", || async { runs.load(Ordering::SeqCst) == 1 }).await;
    tokio::time::sleep(ms(300)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "no overlap while the first run is active"
    );
    tx.send(()).unwrap();
    eventually("later runs", || async { runs.load(Ordering::SeqCst) >= 3 }).await;
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_slots_fire_once_across_two_schedulers_on_one_store() {
    let store: Arc<dyn tlo::Store> = Arc::new(tlo::MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let mut instances = Vec::new();
    for _ in 0..2 {
        let tlo = build(
            Tlo::builder()
                .settings(fast().tick_interval(ms(10)))
                .store_arc(store.clone()),
        );
        let r = runs.clone();
        tlo.register(
            "report",
            TaskOptions::new().schedule(tlo::Schedule::every(Duration::from_secs(3600)).unwrap()),
            move |_ctx, _: serde_json::Value| {
                r.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, String>(()) }
            },
        )
        .unwrap();
        tlo.start().unwrap();
        instances.push(tlo);
    }
    eventually("one run", || async { runs.load(Ordering::SeqCst) == 1 }).await;
    tokio::time::sleep(ms(200)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    for tlo in instances {
        tlo.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_stops_the_orchestrator_on_a_scheduler_error() {
    // A scheduled task whose scheduled arguments do not fit its type fails at every tick.
    let tlo = tlo_with(fast().panic_mode(true).tick_interval(ms(20)));
    tlo.register(
        "typed",
        TaskOptions::new()
            .schedule(tlo::Schedule::every(ms(50)).unwrap())
            .schedule_args(serde_json::json!("not a number")),
        |_ctx, _: u32| async { Ok::<_, String>(()) },
    )
    .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), tlo.run_until_signal())
        .await
        .expect("panic mode stops the orchestrator");
    assert!(
        matches!(result, Err(Error::InvalidArguments { .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_are_pruned_after_their_retention_and_active_ones_never() {
    let tlo = tlo_with(
        fast()
            .retain(JobState::Done, Some(Duration::ZERO))
            .retain(JobState::Cancelled, None),
    );
    let t = tlo
        .register("t", TaskOptions::new(), |_ctx, _: ()| async {
            Ok::<_, String>(())
        })
        .unwrap();
    tlo.start().unwrap();
    let done = tlo.submit(&t, ()).await.unwrap();
    // Done, or already pruned by the pruner's first round.
    eventually("done", || async {
        !matches!(
            done.state().await,
            Ok(JobState::Scheduled | JobState::Running)
        )
    })
    .await;
    let later = tlo
        .submit_with(
            &t,
            (),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let cancelled = tlo
        .submit_with(
            &t,
            (),
            SubmitOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    cancelled.cancel().await.unwrap();
    tlo.stop().await.unwrap();
    // The pruner runs at start, then every minute.
    tlo.start().unwrap();
    eventually("done job pruned", || async {
        matches!(done.job().await, Err(Error::JobNotFound(_)))
    })
    .await;
    assert_eq!(later.state().await.unwrap(), JobState::Scheduled);
    assert_eq!(
        cancelled.state().await.unwrap(),
        JobState::Cancelled,
        "kept forever"
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_claimed_ahead_that_no_runner_takes_go_back_to_the_queue_on_sqlite() {
    let tlo = sqlite_tlo(fast().concurrency(2), "claimed-ahead");
    assert_jobs_claimed_ahead_go_back_when_no_runner_takes_them(&tlo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_new_delayed_and_retried_jobs_start_without_waiting_for_a_poll() {
    // A poll every minute: only the in-process wake-ups can start these jobs in time.
    let tlo = sqlite_tlo(fast().poll_interval(Duration::from_secs(60)), "wakeups");
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let flaky = tlo
        .register(
            "flaky",
            TaskOptions::new()
                .max_attempts(2)
                .backoff(tlo::Backoff::fixed(ms(200))),
            move |_ctx, _: ()| {
                let first = f.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        Err("once".to_string())
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .unwrap();
    let quick = tlo
        .register("quick", TaskOptions::new(), |_ctx, _: ()| async {
            Ok::<_, String>(())
        })
        .unwrap();
    tlo.start().unwrap();
    let started = std::time::Instant::now();
    let now = tlo.submit(&quick, ()).await.unwrap();
    let later = tlo
        .submit_with(&quick, (), SubmitOptions::new().delay(ms(300)))
        .await
        .unwrap();
    let retried = tlo.submit(&flaky, ()).await.unwrap();
    for handle in [now, later] {
        assert_eq!(handle.wait().await.unwrap().state, JobState::Done);
    }
    let job = retried.wait().await.unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Done, 2));
    let took = started.elapsed();
    assert!(took >= ms(300), "the delayed job waited for its eta");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    tlo.stop().await.unwrap();
}
