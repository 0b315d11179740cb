//! Processes (optio): define, launch, launch and wait, cancel, dismiss, launch blocks, each
//! with its typed outcome, on the memory store, an SQLite file and PostgreSQL (schema per test,
//! `TLO_TEST_DATABASE_URL`).

mod common;

use common::*;
use serde_json::{Map, Value, json};
use tlo::{CancelOutcome, ControlError, JobState, ProcessDefinition, TaskOptions, Tlo};

/// The stores a scenario runs on; each call gets fresh, private storage.
async fn on_every_store(name: &str) -> Vec<Tlo> {
    let dir = std::env::temp_dir().join(format!("tlo-proc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sqlite = tlo::SqliteStore::open(dir.join("tlo.db")).unwrap();
    let url = std::env::var("TLO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let options = tlo::PostgresOptions {
        schema: format!("tlo_test_{}_proc_{name}", std::process::id()),
        pool_size: 4,
        ..tlo::PostgresOptions::default()
    };
    let pg = tlo::PostgresStore::connect_with(&url, options)
        .await
        .expect("PostgreSQL must be reachable (TLO_TEST_DATABASE_URL)");
    pg.drop_schema().await.unwrap();
    pg.migrate().await.unwrap();
    vec![
        tlo(),
        build(Tlo::builder().settings(fast()).store(sqlite)),
        build(Tlo::builder().settings(fast()).store(pg)),
    ]
}

fn register(tlo: &Tlo) {
    tlo.register("greet", TaskOptions::new(), |ctx, args: Value| async move {
        ctx.report_progress(Some(50.0), "half way");
        if args["wait"].as_bool() == Some(true) {
            ctx.cancelled().await;
        }
        if let Some(ms) = args["sleep_ms"].as_u64() {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        Ok::<_, String>(format!("hello {}", args["name"].as_str().unwrap_or("?")))
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_is_defined_idle_launched_by_id_and_dismissed_back_to_idle() {
    for tlo in on_every_store("lifecycle").await {
        let store = tlo.store().name();
        register(&tlo);
        let def = ProcessDefinition::new("greeter", "greet")
            .name("Greeter")
            .params(json!({"name": "Ada"}))
            .metadata("team", "core");
        let id = tlo.define_process(def.clone()).await.unwrap();
        // Defining again keeps the one process.
        assert_eq!(tlo.define_process(def).await.unwrap(), id, "{store}");
        let job = tlo.process("greeter").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Idle, "{store}");
        assert_eq!(job.metadata["process"]["name"], "Greeter", "{store}");

        tlo.start().unwrap();
        let ended = tlo.launch_and_wait("greeter").await.unwrap();
        assert_eq!(ended.state, JobState::Done, "{store}");
        assert_eq!(ended.result, Some(json!("hello Ada")), "{store}");
        assert_eq!(ended.progress.percent, Some(100.0), "{store}");

        let idle = tlo.dismiss("greeter").await.unwrap();
        assert_eq!(idle.state, JobState::Idle, "{store}");
        assert_eq!(idle.result, None, "{store}");
        assert_eq!(idle.progress, tlo::Progress::default(), "{store}");
        let err = tlo.dismiss("greeter").await.unwrap_err();
        assert_eq!(err.code(), "not-dismissable", "{store}: {err}");

        // Relaunch after an end runs it again from a clean slate.
        let again = tlo.launch_and_wait("greeter").await.unwrap();
        assert_eq!(again.state, JobState::Done, "{store}");
        assert_eq!(again.attempt, 2, "{store}");
        tlo.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_refuse_with_typed_reasons() {
    for tlo in on_every_store("refusals").await {
        let store = tlo.store().name();
        register(&tlo);
        let missing = tlo.launch("nobody").await.unwrap_err();
        assert!(
            matches!(missing, ControlError::NotFound(ref id) if id == "nobody"),
            "{store}"
        );
        assert_eq!(
            tlo.cancel_process("nobody").await.unwrap_err().code(),
            "not-found"
        );
        assert_eq!(tlo.dismiss("nobody").await.unwrap_err().code(), "not-found");

        let waits = ProcessDefinition::new("waiter", "greet").params(json!({"wait": true}));
        tlo.define_process(waits).await.unwrap();
        let idle = tlo.cancel_process("waiter").await.unwrap_err();
        assert_eq!(idle.code(), "not-cancellable", "{store}: {idle}");

        tlo.start().unwrap();
        tlo.launch("waiter").await.unwrap();
        eventually("the waiter runs", || async {
            tlo.process("waiter").await.unwrap().unwrap().state == JobState::Running
        })
        .await;
        let twice = tlo.launch("waiter").await.unwrap_err();
        assert!(
            matches!(
                twice,
                ControlError::NotLaunchable {
                    state: JobState::Running,
                    ..
                }
            ),
            "{store}: {twice}"
        );
        assert_eq!(
            tlo.dismiss("waiter").await.unwrap_err().code(),
            "not-dismissable"
        );
        assert_eq!(
            tlo.cancel_process("waiter").await.unwrap(),
            CancelOutcome::Requested,
            "{store}"
        );
        let ended = tlo
            .handle::<Value>(tlo.process("waiter").await.unwrap().unwrap().id)
            .wait()
            .await
            .unwrap();
        assert_eq!(ended.state, JobState::Cancelled, "{store}");

        let fixed = ProcessDefinition::new("fixed", "greet")
            .params(json!({"sleep_ms": 1500}))
            .cancellable(false);
        tlo.define_process(fixed).await.unwrap();
        tlo.launch("fixed").await.unwrap();
        eventually("the fixed one runs", || async {
            tlo.process("fixed").await.unwrap().unwrap().state == JobState::Running
        })
        .await;
        let refused = tlo.cancel_process("fixed").await.unwrap_err();
        assert_eq!(refused.code(), "not-cancellable", "{store}: {refused}");
        tlo.stop().await.unwrap();
        let fixed = tlo.process("fixed").await.unwrap().unwrap();
        assert_eq!(fixed.state, JobState::Done, "{store}: ran to its end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_blocks_match_metadata_stack_and_lift() {
    let tlo = tlo();
    register(&tlo);
    for (id, team) in [("billing-report", "billing"), ("core-report", "core")] {
        let def = ProcessDefinition::new(id, "greet").metadata("team", team);
        tlo.define_process(def).await.unwrap();
    }
    let mut billing = Map::new();
    billing.insert("team".into(), json!("billing"));
    let maintenance = tlo.block_launches(billing, "billing database maintenance");
    let everything = tlo.block_launches(Map::new(), "deploy in progress");
    assert_eq!(tlo.launch_blocks_in_force().len(), 2);

    let err = tlo.launch("billing-report").await.unwrap_err();
    assert!(
        matches!(&err, ControlError::LaunchBlocked { reason, .. } if reason == "billing database maintenance"),
        "{err}"
    );
    let err = tlo.launch("core-report").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "launch-blocked: process \"core-report\": deploy in progress"
    );

    assert!(tlo.unblock_launches(everything.id));
    assert!(!tlo.unblock_launches(everything.id));
    tlo.launch("core-report").await.unwrap();
    assert_eq!(
        tlo.launch("billing-report").await.unwrap_err().code(),
        "launch-blocked"
    );
    tlo.unblock_launches(maintenance.id);
    let job = tlo.launch("billing-report").await.unwrap();
    assert_eq!(job.state, JobState::Scheduled);
}
