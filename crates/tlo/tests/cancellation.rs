//! Cancellation and the state machine: cooperative signal, grace period, forced end,
//! scheduled jobs cancelled directly, exactly one of concurrent cancels, end states kept.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tlo::{CancelOutcome, Error, JobState, ShellCommand, SubmitOptions, TaskOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_handler_ends_cancelled() {
    let tlo = tlo();
    let t = tlo
        .register("loop", TaskOptions::new(), |ctx, _: ()| async move {
            ctx.cancelled().await;
            // Returning normally after a cancel still ends `cancelled`.
            Ok::<_, String>("stopped cleanly".to_string())
        })
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo.submit(&t, ()).await.unwrap();
    eventually("running", || async { handle.is_running().await.unwrap() }).await;
    assert_eq!(handle.cancel().await.unwrap(), CancelOutcome::Requested);
    let job = handle.wait().await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(matches!(handle.result().await, Err(Error::JobCancelled(_))));
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_ignoring_cancel_is_forced_after_the_grace_period() {
    let tlo = tlo_with(fast().cancel_grace(ms(200)));
    let t = tlo
        .register("stubborn", TaskOptions::new(), |_ctx, _: ()| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, String>(())
        })
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo.submit(&t, ()).await.unwrap();
    eventually("running", || async { handle.is_running().await.unwrap() }).await;
    let asked = std::time::Instant::now();
    handle.cancel().await.unwrap();
    eventually("cancelling acknowledged", || async {
        handle.state().await.unwrap() != JobState::CancelRequested
    })
    .await;
    let job = handle.wait().await.unwrap();
    assert!(asked.elapsed() >= ms(200));
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.error.as_deref().unwrap().contains("grace period"),
        "{:?}",
        job.error
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprocess_gets_sigterm_then_sigkill() {
    let tlo = tlo_with(fast().cancel_grace(ms(300)));
    tlo.register_shell(
        "polite",
        TaskOptions::new(),
        ShellCommand::new("sleep 30").unwrap(),
    )
    .unwrap();
    tlo.register_shell(
        "deaf",
        TaskOptions::new(),
        ShellCommand::new("trap '' TERM; sleep 30").unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let polite = tlo
        .submit_json("polite", json!({}), SubmitOptions::new())
        .await
        .unwrap();
    let deaf = tlo
        .submit_json("deaf", json!({}), SubmitOptions::new())
        .await
        .unwrap();
    for handle in [&polite, &deaf] {
        eventually("running", || async { handle.is_running().await.unwrap() }).await;
    }
    tokio::time::sleep(ms(100)).await; // let the shells install their traps
    polite.cancel().await.unwrap();
    deaf.cancel().await.unwrap();
    assert_eq!(polite.wait().await.unwrap().state, JobState::Cancelled);
    let deaf = deaf.wait().await.unwrap();
    assert_eq!(deaf.state, JobState::Failed);
    assert!(deaf.error.as_deref().unwrap().contains("grace period"));
    tlo.stop().await.unwrap();
}

#[tokio::test]
async fn scheduled_job_is_cancelled_directly_and_never_runs() {
    let tlo = tlo();
    let t = tlo
        .register("t", TaskOptions::new(), |_ctx, _: ()| async {
            Err::<(), _>("must not run")
        })
        .unwrap();
    let handle = tlo.submit(&t, ()).await.unwrap();
    assert_eq!(handle.cancel().await.unwrap(), CancelOutcome::Cancelled);
    tlo.start().unwrap();
    tokio::time::sleep(ms(100)).await;
    let job = handle.job().await.unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Cancelled, 0));
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_concurrent_cancels_succeeds() {
    let tlo = tlo();
    let t = tlo
        .register("t", TaskOptions::new(), |ctx, _: ()| async move {
            ctx.cancelled().await;
            Ok::<_, String>(())
        })
        .unwrap();
    tlo.start().unwrap();
    for scheduled in [true, false] {
        let handle = if scheduled {
            tlo.submit_with(&t, (), SubmitOptions::new().delay(Duration::from_secs(60)))
                .await
                .unwrap()
        } else {
            let h = tlo.submit(&t, ()).await.unwrap();
            eventually("running", || async { h.is_running().await.unwrap() }).await;
            h
        };
        let attempts = (0..8).map(|_| {
            let h = handle.clone();
            tokio::spawn(async move { h.cancel().await })
        });
        let results = futures_join(attempts).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "scheduled={scheduled}: {results:?}");
        for err in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(err, Error::IllegalTransition { .. }), "{err}");
        }
    }
    tlo.stop().await.unwrap();
}

async fn futures_join<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_states_refuse_cancel_with_a_typed_error() {
    let tlo = tlo();
    let t = tlo
        .register("t", TaskOptions::new(), |_ctx, _: ()| async {
            Ok::<_, String>(())
        })
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo.submit(&t, ()).await.unwrap();
    handle.wait().await.unwrap();
    let err = handle.cancel().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::IllegalTransition {
                from: JobState::Done,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(handle.state().await.unwrap(), JobState::Done);
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_cancellable_task_refuses_cancel_while_running() {
    let tlo = tlo();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = std::sync::Mutex::new(Some(rx));
    let t = tlo
        .register(
            "t",
            TaskOptions::new().cancellable(false),
            move |_ctx, _: ()| {
                let rx = rx.lock().unwrap().take();
                async move {
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    Ok::<_, String>(())
                }
            },
        )
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo.submit(&t, ()).await.unwrap();
    eventually("running", || async { handle.is_running().await.unwrap() }).await;
    assert!(matches!(
        handle.cancel().await,
        Err(Error::NotCancellable(_))
    ));
    tx.send(()).unwrap();
    assert_eq!(handle.wait().await.unwrap().state, JobState::Done);
    tlo.stop().await.unwrap();
}
