//! The engine on PostgreSQL: several orchestrators (standing in for processes on several hosts)
//! share one schema. Reads `TLO_TEST_DATABASE_URL`; fails when the server is unreachable.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tlo::{
    JobState, PostgresOptions, PostgresStore, StopBehavior, SubmitOptions, TaskOptions, Tlo,
};
use tlo_core::{ClaimRequest, NewJob, QueueDemand, Store};

fn url() -> String {
    std::env::var("TLO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn store(schema: &str) -> PostgresStore {
    let options = PostgresOptions {
        schema: schema.into(),
        pool_size: 4,
        ..PostgresOptions::default()
    };
    PostgresStore::connect_with(&url(), options)
        .await
        .expect("PostgreSQL must be reachable (TLO_TEST_DATABASE_URL)")
}

fn schema(name: &str) -> String {
    format!("tlo_test_{}_{name}", std::process::id())
}

/// An orchestrator on the shared schema, as one worker process would be.
async fn worker(schema: &str, id: &str, settings: tlo::SettingsBuilder) -> Tlo {
    let pg = store(schema).await;
    let locker = pg.locker();
    build(
        Tlo::builder()
            .settings(settings.worker_id(id))
            .store(pg)
            .locker(locker),
    )
}

fn waiter(tlo: &Tlo) -> tlo::TaskRef<(), String> {
    tlo.register(
        "wait_for_cancel",
        TaskOptions::new(),
        |ctx, _: ()| async move {
            ctx.cancelled().await;
            Ok::<_, String>("stopped".to_string())
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_process_reaches_the_job_within_a_second() {
    let schema = schema("cancel");
    let a = worker(&schema, "a", fast()).await;
    let b = worker(&schema, "b", fast()).await;
    let task = waiter(&a);
    waiter(&b);
    a.start().unwrap();
    let handle = a.submit(&task, ()).await.unwrap();
    eventually("running on a", || async {
        handle.is_running().await.unwrap()
    })
    .await;
    let asked = Instant::now();
    b.cancel(handle.id()).await.unwrap();
    let job = handle.wait().await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
    a.stop().await.unwrap();
    store(&schema).await.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusivity_keys_hold_across_processes() {
    let schema = schema("exclusive");
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for id in ["a", "b"] {
        let tlo = worker(&schema, id, fast().tick_interval(ms(20))).await;
        let (r, p) = (running.clone(), peak.clone());
        tlo.register(
            "sync",
            TaskOptions::new().exclusive("{account}"),
            move |_ctx, _: serde_json::Value| {
                let (r, p) = (r.clone(), p.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(ms(50)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, String>(())
                }
            },
        )
        .unwrap();
        tlo.start().unwrap();
        workers.push(tlo);
    }
    let mut handles = Vec::new();
    for i in 0..6 {
        let submitter = &workers[i % 2];
        handles.push(
            submitter
                .submit_json("sync", json!({"account": "acme"}), SubmitOptions::new())
                .await
                .unwrap(),
        );
    }
    for handle in handles {
        assert_eq!(handle.wait().await.unwrap().state, JobState::Done);
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "one holder at a time across workers"
    );
    for tlo in workers {
        tlo.stop().await.unwrap();
    }
    store(&schema).await.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_vanished_is_rescued_and_runs_once_more() {
    let schema = schema("rescue");
    let pg = store(&schema).await;
    let mut new = NewJob::new("work", json!(null));
    new.max_attempts = 2;
    let id = pg.enqueue(vec![new]).await.unwrap()[0].id;
    // A worker claims it with a short lease and is never heard of again.
    let request = ClaimRequest {
        worker: "vanished".into(),
        queues: vec![QueueDemand {
            queue: "default".into(),
            limit: 1,
        }],
        limit: 1,
        now: tlo::Utc::now(),
        lease: Duration::from_millis(200),
    };
    assert_eq!(pg.claim(&request).await.unwrap().len(), 1);
    let survivor = worker(
        &schema,
        "survivor",
        fast().lease(Duration::from_millis(600)),
    )
    .await;
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    survivor
        .register(
            "work",
            TaskOptions::new(),
            move |_ctx, _: serde_json::Value| {
                r.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, String>(()) }
            },
        )
        .unwrap();
    survivor.start().unwrap();
    let job = survivor.handle::<()>(id).wait().await.unwrap();
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.attempt, 2);
    assert!(
        job.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("vanished")
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    survivor.stop().await.unwrap();
    pg.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_returns_once_every_outcome_is_recorded() {
    for behavior in [StopBehavior::Drain, StopBehavior::Ignore] {
        let schema = schema(&format!("stop_outcomes_{behavior:?}").to_lowercase());
        let tlo = worker(&schema, "a", fast().concurrency(16)).await;
        assert_a_stop_records_every_outcome(&tlo, behavior).await;
        store(&schema).await.drop_schema().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_claimed_ahead_that_no_runner_takes_go_back_to_the_queue() {
    let schema = schema("claimed_ahead");
    let tlo = worker(&schema, "a", fast().concurrency(2)).await;
    assert_jobs_claimed_ahead_go_back_when_no_runner_takes_them(&tlo).await;
    store(&schema).await.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_slots_fire_once_across_three_schedulers() {
    let schema = schema("schedulers");
    let mut schedulers = Vec::new();
    for id in ["a", "b", "c"] {
        let tlo = worker(&schema, id, fast().tick_interval(ms(10))).await;
        tlo.register(
            "tick",
            // Overlap allowed: a slot is never skipped for a run still being recorded, so every
            // slot is contended by all three.
            TaskOptions::new().schedule(tlo::Schedule::every(ms(100)).unwrap().allow_overlap(true)),
            |_ctx, _: serde_json::Value| async { Ok::<_, String>(()) },
        )
        .unwrap();
        tlo.start().unwrap();
        schedulers.push(tlo);
    }
    tokio::time::sleep(ms(1_500)).await;
    for tlo in &schedulers {
        tlo.stop().await.unwrap();
    }
    let jobs = store(&schema)
        .await
        .list(&tlo::JobFilter::default().task("tick"))
        .await
        .unwrap();
    let mut slots: Vec<String> = jobs
        .iter()
        .map(|job| job.metadata["schedule_slot"].as_str().unwrap().to_owned())
        .collect();
    let fired = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), fired, "a slot fired twice: {slots:?}");
    // 1.5 s of 100 ms slots; the three took turns winning them.
    assert!(fired >= 8, "only {fired} slots fired");
    store(&schema).await.drop_schema().await.unwrap();
}

/// A worker on `schema` whose store listens (`listen`) or not, polling every `poll`, with a
/// task `noop`.
async fn waker_test_worker(schema: &str, listen: bool, poll: Duration) -> Tlo {
    let options = PostgresOptions {
        schema: schema.into(),
        pool_size: 4,
        listen,
        ..PostgresOptions::default()
    };
    let pg = PostgresStore::connect_with(&url(), options).await.unwrap();
    let tlo = build(
        Tlo::builder()
            .settings(fast().worker_id("w").poll_interval(poll))
            .store(pg),
    );
    tlo.register(
        "noop",
        TaskOptions::new(),
        |_ctx, _: serde_json::Value| async { Ok::<_, String>(()) },
    )
    .unwrap();
    tlo.start().unwrap();
    tlo
}

/// How long a job enqueued from another connection takes to end on `worker`.
async fn time_to_done(worker: &Tlo, schema: &str) -> Duration {
    // Let the worker's first claims and its LISTEN settle.
    tokio::time::sleep(ms(300)).await;
    let other = store(schema).await;
    let started = Instant::now();
    let id = other
        .enqueue(vec![NewJob::new("noop", json!(null))])
        .await
        .unwrap()[0]
        .id;
    let job = worker.handle::<()>(id).wait().await.unwrap();
    assert_eq!(job.state, JobState::Done);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_a_worker_long_before_its_next_poll() {
    let schema = schema("listen");
    let worker = waker_test_worker(&schema, true, Duration::from_secs(30)).await;
    let took = time_to_done(&worker, &schema).await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    worker.stop().await.unwrap();
    store(&schema).await.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_listen_a_worker_finds_new_jobs_by_polling() {
    let polled = schema("poll");
    let worker = waker_test_worker(&polled, false, ms(200)).await;
    let took = time_to_done(&worker, &polled).await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    worker.stop().await.unwrap();
    store(&polled).await.drop_schema().await.unwrap();

    // Polling is what found it: with no LISTEN and a long poll interval, a new job waits.
    let unpolled = schema("poll_long");
    let idle = waker_test_worker(&unpolled, false, Duration::from_secs(30)).await;
    let other = store(&unpolled).await;
    tokio::time::sleep(ms(300)).await;
    let id = other
        .enqueue(vec![NewJob::new("noop", json!(null))])
        .await
        .unwrap()[0]
        .id;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let job = other.get(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Scheduled, "nothing woke the worker");
    idle.stop_with(StopBehavior::Ignore).await.unwrap();
    other.drop_schema().await.unwrap();
}
