//! Jobs and handles: wait, result, cancel, watch; queries, filters, logs; order, eta, unique keys.

mod common;

use std::sync::Arc;

use chrono::Utc;
use common::*;
use parking_lot::Mutex;
use tlo::{Error, JobEventKind, JobFilter, JobState, LogLevel, SubmitOptions, TaskOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_reports_running_and_watches_state_and_progress() {
    let tlo = tlo();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let gate = Arc::new(Mutex::new(Some(rx)));
    let t = tlo
        .register("slow", TaskOptions::new(), move |ctx, _: ()| {
            let gate = gate.lock().take();
            async move {
                ctx.report_progress(40.0, "step 1");
                ctx.log(LogLevel::Info, "working");
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                Ok::<_, String>(7)
            }
        })
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo.submit(&t, ()).await.unwrap();
    let mut events = handle.events();
    eventually("running", || async { handle.is_running().await.unwrap() }).await;
    eventually("progress flushed", || async {
        handle.job().await.unwrap().progress.percent == Some(40.0)
    })
    .await;
    assert_eq!(
        handle.job().await.unwrap().progress.message.as_deref(),
        Some("step 1")
    );
    tx.send(()).unwrap();
    assert_eq!(handle.result().await.unwrap(), 7);
    assert!(!handle.is_running().await.unwrap());
    let mut kinds = Vec::new();
    while let Some(event) = events.next().await {
        kinds.push(event.kind);
    }
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, JobEventKind::Progress { .. })),
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&JobEventKind::Succeeded));
    let logs = handle.logs().await.unwrap();
    let messages: Vec<_> = logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages, ["step 1", "working"]);
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_messages_is_coalesced_with_a_count_never_lost_silently() {
    let tlo = tlo();
    let flood = tlo
        .register("flood", TaskOptions::new(), |ctx, n: usize| async move {
            for i in 0..n {
                ctx.report_progress(100.0 * i as f64 / n as f64, format!("item {i}"));
            }
            Ok::<_, String>(())
        })
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo.submit(&flood, 5000).await.unwrap();
    handle.result().await.unwrap();
    let logs = handle.logs().await.unwrap();
    let mut kept = 0;
    let mut dropped = 0;
    for entry in &logs {
        match entry
            .message
            .strip_prefix('(')
            .and_then(|m| m.strip_suffix(" messages dropped)"))
        {
            Some(count) => {
                assert_eq!(entry.level, LogLevel::Warning);
                dropped += count.parse::<usize>().unwrap();
            }
            None => kept += 1,
        }
    }
    assert!(dropped > 0, "a flood is cut: {} lines kept", kept);
    assert_eq!(kept + dropped, 5000, "every message is kept or counted");
    // The last progress written is the last reported.
    let job = handle.job().await.unwrap();
    assert_eq!(job.progress.message.as_deref(), Some("item 4999"));
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_job_result_is_the_error() {
    let tlo = tlo();
    let t = tlo
        .register("boom", TaskOptions::new(), |_ctx, _: ()| async {
            Err::<(), _>("disk full")
        })
        .unwrap();
    tlo.start().unwrap();
    let err = tlo
        .submit(&t, ())
        .await
        .unwrap()
        .result()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::JobFailed { ref error, .. } if error == "disk full"),
        "{err}"
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_by_priority_then_eta_then_submission_order() {
    let tlo = tlo_with(fast().concurrency(1));
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    let t = tlo
        .register("t", TaskOptions::new(), move |_ctx, label: String| {
            seen.lock().push(label);
            async { Ok::<_, String>(()) }
        })
        .unwrap();
    let past = Utc::now() - chrono::Duration::seconds(10);
    let earlier = Utc::now() - chrono::Duration::seconds(20);
    tlo.submit_with(&t, "low-first".into(), SubmitOptions::new().eta(past))
        .await
        .unwrap();
    tlo.submit_with(&t, "low-second".into(), SubmitOptions::new().eta(past))
        .await
        .unwrap();
    tlo.submit_with(
        &t,
        "low-earlier-eta".into(),
        SubmitOptions::new().eta(earlier),
    )
    .await
    .unwrap();
    tlo.submit_with(
        &t,
        "high".into(),
        SubmitOptions::new().priority(5).eta(past),
    )
    .await
    .unwrap();
    tlo.start().unwrap();
    eventually("all ran", || async { order.lock().len() == 4 }).await;
    assert_eq!(
        *order.lock(),
        ["high", "low-earlier-eta", "low-first", "low-second"]
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_job_waits_for_its_eta() {
    let tlo = tlo();
    let t = tlo
        .register("t", TaskOptions::new(), |_ctx, _: ()| async {
            Ok::<_, String>(Utc::now())
        })
        .unwrap();
    tlo.start().unwrap();
    let submitted = Utc::now();
    let handle = tlo
        .submit_with(&t, (), SubmitOptions::new().delay(ms(300)))
        .await
        .unwrap();
    assert_eq!(handle.state().await.unwrap(), JobState::Scheduled);
    let ran_at = handle.result().await.unwrap();
    assert!(ran_at - submitted >= chrono::Duration::milliseconds(300));
    tlo.stop().await.unwrap();
}

#[tokio::test]
async fn unique_key_returns_the_existing_job() {
    let tlo = tlo();
    let t = tlo
        .register("t", TaskOptions::new(), |_ctx, _: ()| async {
            Ok::<_, String>(())
        })
        .unwrap();
    let first = tlo
        .submit_with(&t, (), SubmitOptions::new().unique_key("report-2026-11"))
        .await
        .unwrap();
    let second = tlo
        .submit_with(&t, (), SubmitOptions::new().unique_key("report-2026-11"))
        .await
        .unwrap();
    assert!(first.was_inserted());
    assert!(!second.was_inserted());
    assert_eq!(first.id(), second.id());
    assert_eq!(tlo.jobs(&JobFilter::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn list_filters_by_state_task_queue_and_metadata() {
    let tlo = tlo();
    let a = tlo
        .register("a", TaskOptions::new().queue("qa"), |_ctx, _: ()| async {
            Ok::<_, String>(())
        })
        .unwrap();
    let b = tlo
        .register("b", TaskOptions::new(), |_ctx, _: ()| async {
            Ok::<_, String>(())
        })
        .unwrap();
    let a1 = tlo
        .submit_with(
            &a,
            (),
            SubmitOptions::new()
                .metadata("tenant", "acme")
                .metadata("tier", 1),
        )
        .await
        .unwrap();
    tlo.submit_with(&a, (), SubmitOptions::new().metadata("tenant", "acme"))
        .await
        .unwrap();
    let b1 = tlo.submit(&b, ()).await.unwrap();
    b1.cancel().await.unwrap();

    let ids = |jobs: Vec<tlo::Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let by_task = tlo.jobs(&JobFilter::default().task("a")).await.unwrap();
    assert_eq!(by_task.len(), 2);
    let by_queue = tlo.jobs(&JobFilter::default().queue("qa")).await.unwrap();
    assert_eq!(by_queue.len(), 2);
    let both = JobFilter::default()
        .metadata("tenant", "acme")
        .metadata("tier", 1);
    assert_eq!(ids(tlo.jobs(&both).await.unwrap()), vec![a1.id()]);
    let cancelled = JobFilter::default().state(JobState::Cancelled);
    assert_eq!(ids(tlo.jobs(&cancelled).await.unwrap()), vec![b1.id()]);
    assert_eq!(
        tlo.jobs(&JobFilter::default().limit(1))
            .await
            .unwrap()
            .len(),
        1
    );
    let root = JobFilter::default().root(a1.id());
    assert_eq!(ids(tlo.jobs(&root).await.unwrap()), vec![a1.id()]);
}

#[tokio::test]
async fn unknown_job_is_not_found() {
    let tlo = tlo();
    let id = tlo::JobId::new();
    assert!(matches!(tlo.job(id).await, Err(Error::JobNotFound(x)) if x == id));
    assert!(matches!(tlo.cancel(id).await, Err(Error::JobNotFound(_))));
}
