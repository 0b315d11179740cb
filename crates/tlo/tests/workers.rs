//! Workers: concurrency limits, timeouts, retries with backoff, panics.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use tlo::{Backoff, JobState, ShellCommand, SubmitOptions, TaskOptions};

/// Registers a task that tracks how many of its jobs run at once.
fn peak_tracker(
    tlo: &tlo::Tlo,
    name: &str,
    options: TaskOptions,
) -> (tlo::TaskRef<(), ()>, Arc<AtomicUsize>) {
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (c, p) = (current, peak.clone());
    let task = tlo
        .register(name, options, move |_ctx, _: ()| {
            let (c, p) = (c.clone(), p.clone());
            async move {
                let now = c.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(ms(40)).await;
                c.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>(())
            }
        })
        .unwrap();
    (task, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_concurrency_limit_holds() {
    let settings = || fast().concurrency(3);
    for tlo in [tlo_with(settings()), sqlite_tlo(settings(), "global_limit")] {
        let (task, peak) = peak_tracker(&tlo, "t", TaskOptions::new());
        let ids = tlo.submit_batch(&task, vec![(); 12]).await.unwrap();
        tlo.start().unwrap();
        for id in ids {
            tlo.handle::<()>(id).wait().await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3, "{}", tlo.store().name());
        tlo.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_queue_limit_holds_while_other_queues_proceed() {
    let settings = || fast().concurrency(8).queue_concurrency("slow", 1);
    for tlo in [tlo_with(settings()), sqlite_tlo(settings(), "queue_limit")] {
        let store = tlo.store().name();
        let (slow, slow_peak) = peak_tracker(&tlo, "slow", TaskOptions::new().queue("slow"));
        let (fast_task, fast_peak) = peak_tracker(&tlo, "fast", TaskOptions::new());
        let mut ids = tlo.submit_batch(&slow, vec![(); 4]).await.unwrap();
        ids.extend(tlo.submit_batch(&fast_task, vec![(); 4]).await.unwrap());
        tlo.start().unwrap();
        // Submitted while running too: claims made with the submit obey the limit as well.
        ids.extend(tlo.submit_batch(&slow, vec![(); 4]).await.unwrap());
        for id in ids {
            tlo.handle::<()>(id).wait().await.unwrap();
        }
        assert_eq!(slow_peak.load(Ordering::SeqCst), 1, "{store}");
        assert!(fast_peak.load(Ordering::SeqCst) > 1, "{store}");
        tlo.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_the_job_and_drops_the_handler() {
    let tlo = tlo();
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    let t = tlo
        .register(
            "sleepy",
            TaskOptions::new().timeout(ms(100)),
            move |_ctx, _: ()| {
                let f = f.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(())
                }
            },
        )
        .unwrap();
    tlo.start().unwrap();
    let job = tlo.submit(&t, ()).await.unwrap().wait().await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.error.as_deref(), Some("Timeout after 0.1s"));
    tokio::time::sleep(ms(100)).await;
    assert_eq!(finished.load(Ordering::SeqCst), 0, "handler was dropped");
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_a_subprocess() {
    let dir = std::env::temp_dir().join(format!("tlo-timeout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("survived");
    let tlo = tlo();
    tlo.register_shell(
        "sleepy",
        TaskOptions::new().timeout(ms(200)),
        ShellCommand::new("sleep 1; touch {marker}").unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let job = tlo
        .submit_json("sleepy", json!({"marker": marker}), SubmitOptions::new())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.error.as_deref(), Some("Timeout after 0.2s"));
    tokio::time::sleep(ms(1300)).await;
    assert!(!marker.exists(), "the subprocess outlived its timeout");
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_keep_every_attempts_error() {
    for tlo in [tlo(), sqlite_tlo(fast(), "retries")] {
        retries_with_backoff_on(tlo).await;
    }
}

async fn retries_with_backoff_on(tlo: tlo::Tlo) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let t = tlo
        .register(
            "flaky",
            TaskOptions::new()
                .max_attempts(3)
                .backoff(Backoff::fixed(ms(50))),
            move |ctx, _: ()| {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                let attempt = ctx.attempt();
                async move {
                    if n < 3 {
                        Err(format!("failure {attempt}"))
                    } else {
                        Ok(attempt)
                    }
                }
            },
        )
        .unwrap();
    let retried = Arc::new(AtomicUsize::new(0));
    tlo.start().unwrap();
    // Subscribe first: the job may start (and fail) before `submit` returns.
    let mut events = tlo.events();
    let handle = tlo.submit(&t, ()).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), 3);
    let job = handle.job().await.unwrap();
    assert_eq!(job.attempt, 3);
    let errors: Vec<_> = job.attempts.iter().map(|a| a.error.clone()).collect();
    assert_eq!(
        errors,
        [
            Some("failure 1".to_string()),
            Some("failure 2".to_string()),
            None
        ]
    );
    let gap = job.attempts[1].started_at - job.attempts[0].finished_at.unwrap();
    assert!(
        gap >= chrono::Duration::milliseconds(50),
        "backoff respected: {gap}"
    );
    while let Ok(Some(event)) = tokio::time::timeout(ms(100), events.next()).await {
        if matches!(event.kind, tlo::JobEventKind::Retried { .. }) {
            retried.fetch_add(1, Ordering::SeqCst);
        }
    }
    assert_eq!(retried.load(Ordering::SeqCst), 2);
    assert_eq!(tlo.metrics().tasks["flaky"].retried, 2);
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_job_and_the_worker_lives_on() {
    let tlo = tlo();
    let t = tlo
        .register("panics", TaskOptions::new(), |_ctx, n: u32| async move {
            if n == 0 {
                panic!("division by zero");
            }
            Ok::<_, String>(10 / n)
        })
        .unwrap();
    let b = tlo
        .register_blocking("panics_blocking", TaskOptions::new(), |_ctx, _: ()| {
            if true {
                panic!("blocking boom");
            }
            Ok::<_, String>(())
        })
        .unwrap();
    tlo.start().unwrap();
    let job = tlo.submit(&t, 0).await.unwrap().wait().await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.as_deref().unwrap().contains("division by zero"));
    let job = tlo.submit(&b, ()).await.unwrap().wait().await.unwrap();
    assert!(job.error.as_deref().unwrap().contains("blocking boom"));
    assert_eq!(tlo.submit(&t, 5).await.unwrap().result().await.unwrap(), 2);
    tlo.stop().await.unwrap();
}
