//! Processes (optio): define, launch, launch and wait, cancel, dismiss, launch blocks, each
//! with its typed outcome, on the memory store, an SQLite file and PostgreSQL (schema per test,
//! `TLO_TEST_DATABASE_URL`).

mod common;

use common::*;
use serde_json::{Map, Value, json};
use tlo::{CancelOutcome, ControlError, JobState, ProcessDefinition, Schedule, TaskOptions, Tlo};

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

/// A child task: `n + 1`.
fn register_step(tlo: &Tlo) -> tlo::TaskRef<i64, i64> {
    tlo.register("step", TaskOptions::new(), |_ctx, n: i64| async move {
        Ok::<_, String>(n + 1)
    })
    .unwrap()
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
    assert_eq!(tlo.launch_blocks_in_force().await.unwrap().len(), 2);

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

    assert!(tlo.unblock_launches(everything.id).await.unwrap());
    assert!(!tlo.unblock_launches(everything.id).await.unwrap());
    tlo.launch("core-report").await.unwrap();
    assert_eq!(
        tlo.launch("billing-report").await.unwrap_err().code(),
        "launch-blocked"
    );
    tlo.unblock_launches(maintenance.id).await.unwrap();
    let job = tlo.launch("billing-report").await.unwrap();
    assert_eq!(job.state, JobState::Scheduled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_launch_blocks_hold_for_every_orchestrator_on_the_store() {
    for tlo in on_every_store("blocks").await {
        let store = tlo.store().name();
        register(&tlo);
        let def = ProcessDefinition::new("billing-report", "greet").metadata("team", "billing");
        tlo.define_process(def).await.unwrap();
        let mut billing = Map::new();
        billing.insert("team".into(), json!("billing"));
        let block = tlo
            .block_launches_persistent(billing.clone(), "billing database maintenance")
            .await
            .unwrap();
        assert!(block.persistent);

        // Another orchestrator on the same store (another process, or this one restarted)
        // sees the block and obeys it.
        let other = build(
            Tlo::builder()
                .settings(fast())
                .store_arc(tlo.store().clone()),
        );
        register(&other);
        let seen = other.launch_blocks_in_force().await.unwrap();
        assert_eq!(seen.len(), 1, "{store}");
        assert_eq!(seen[0].filter, billing, "{store}");
        assert_eq!(seen[0].reason, "billing database maintenance", "{store}");
        let err = other.launch("billing-report").await.unwrap_err();
        assert_eq!(err.code(), "launch-blocked", "{store}: {err}");
        assert!(
            err.to_string().contains("billing database maintenance"),
            "{store}"
        );

        // Lifted from the other one, it is gone for both.
        assert!(other.unblock_launches(block.id).await.unwrap(), "{store}");
        assert!(!tlo.unblock_launches(block.id).await.unwrap(), "{store}");
        assert!(
            tlo.launch_blocks_in_force().await.unwrap().is_empty(),
            "{store}"
        );
        let job = tlo.launch("billing-report").await.unwrap();
        assert_eq!(job.state, JobState::Scheduled, "{store}");
        // A process id is not a block: unblocking it refuses and deletes nothing.
        assert!(!tlo.unblock_launches(job.id).await.unwrap(), "{store}");
        assert!(
            tlo.process("billing-report").await.unwrap().is_some(),
            "{store}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaunch_and_dismiss_clear_the_previous_runs_children_and_log() {
    for tlo in on_every_store("forget").await {
        let store = tlo.store().name();
        let step = register_step(&tlo);
        tlo.register("pipeline", TaskOptions::new(), move |ctx, _: Value| {
            let step = step.clone();
            async move {
                ctx.log(tlo::LogLevel::Info, format!("attempt {}", ctx.attempt()));
                let child = ctx
                    .run_child(&step, 1, tlo::ChildOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(child.result.unwrap_or_default())
            }
        })
        .unwrap();
        let id = tlo
            .define_process(ProcessDefinition::new("pipeline", "pipeline"))
            .await
            .unwrap();
        tlo.start().unwrap();
        let children = || async {
            tlo.jobs(&tlo::JobFilter::default().parent(id))
                .await
                .unwrap()
        };

        assert_eq!(
            tlo.launch_and_wait("pipeline").await.unwrap().result,
            Some(json!(2))
        );
        let first = children().await;
        assert_eq!(first.len(), 1, "{store}");
        assert_eq!(tlo.logs(id).await.unwrap().len(), 1, "{store}");

        tlo.launch_and_wait("pipeline").await.unwrap();
        let second = children().await;
        assert_eq!(second.len(), 1, "{store}: the first run's child is gone");
        assert_ne!(second[0].id, first[0].id, "{store}");
        let log = tlo.logs(id).await.unwrap();
        assert_eq!(log.len(), 1, "{store}: a fresh log");
        assert_eq!(log[0].message, "attempt 2", "{store}");

        tlo.dismiss("pipeline").await.unwrap();
        assert!(children().await.is_empty(), "{store}");
        assert!(tlo.logs(id).await.unwrap().is_empty(), "{store}");

        tlo.launch_and_wait("pipeline").await.unwrap();
        assert_eq!(tlo.delete_process("pipeline").await.unwrap(), 2, "{store}");
        assert!(tlo.process("pipeline").await.unwrap().is_none(), "{store}");
        assert!(children().await.is_empty(), "{store}");
        assert_eq!(
            tlo.delete_process("pipeline").await.unwrap_err().code(),
            "not-found"
        );
        tlo.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_creates_updates_and_removes_within_its_metadata_scope() {
    for tlo in on_every_store("resync").await {
        let store = tlo.store().name();
        register(&tlo);
        let core = |id: &str, params: Value| {
            ProcessDefinition::new(id, "greet")
                .params(params)
                .metadata("team", "core")
        };
        let other = ProcessDefinition::new("theirs", "greet").metadata("team", "other");
        let mut scope = Map::new();
        scope.insert("team".into(), json!("core"));

        let first = [
            core("a", json!({"name": "A"})),
            core("b", json!({"wait": true})),
        ];
        let report = tlo.resync(&first, true, &scope).await.unwrap();
        assert_eq!(report.created, ["a", "b"], "{store}");
        tlo.define_process(other).await.unwrap();
        // A plain job in scope is not a process: resync neither trips on it nor removes it.
        let plain = tlo::SubmitOptions::new()
            .metadata("team", "core")
            .delay(std::time::Duration::from_secs(3600));
        let plain = tlo
            .submit_json("greet", json!({}), plain)
            .await
            .unwrap()
            .id();
        assert!(tlo.resync(&first, true, &scope).await.unwrap() == tlo::ResyncReport::default());
        assert!(tlo.job(plain).await.is_ok(), "{store}");

        tlo.start().unwrap();
        tlo.launch("b").await.unwrap();
        eventually("b runs", || async {
            tlo.process("b").await.unwrap().unwrap().state == JobState::Running
        })
        .await;
        let second = [core("a", json!({"name": "Alan"})), core("c", json!({}))];
        let report = tlo
            .resync(&second, true, &scope)
            .await
            .unwrap_or_else(|e| panic!("{store}: {e:?}"));
        assert_eq!(report.created, ["c"], "{store}");
        assert_eq!(report.updated, ["a"], "{store}");
        assert_eq!(report.removed, ["b"], "{store}");
        assert!(
            tlo.process("b").await.unwrap().is_none(),
            "{store}: b deleted"
        );
        assert!(
            tlo.process("theirs").await.unwrap().is_some(),
            "{store}: out of scope"
        );
        let a = tlo.process("a").await.unwrap().unwrap();
        assert_eq!(
            (a.state, a.args.clone()),
            (JobState::Idle, json!({"name": "Alan"}))
        );
        let ran = tlo.launch_and_wait("a").await.unwrap();
        assert_eq!(ran.result, Some(json!("hello Alan")), "{store}");
        tlo.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_processes_are_deleted_with_their_children_once_they_end() {
    for tlo in on_every_store("ephemeral").await {
        let store = tlo.store().name();
        let step = register_step(&tlo);
        tlo.register("once", TaskOptions::new(), move |ctx, args: Value| {
            let step = step.clone();
            async move {
                if args["mark"].as_bool() == Some(true) {
                    ctx.mark_ephemeral().await.map_err(|e| e.to_string())?;
                }
                let child = ctx
                    .run_child(&step, 1, tlo::ChildOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(child.result.unwrap_or_default())
            }
        })
        .unwrap();
        let defined = ProcessDefinition::new("defined", "once").ephemeral(true);
        let marked = ProcessDefinition::new("marked", "once").params(json!({"mark": true}));
        let kept = ProcessDefinition::new("kept", "once");
        for def in [defined, marked, kept] {
            tlo.define_process(def).await.unwrap();
        }
        tlo.start().unwrap();
        for id in ["defined", "marked", "kept"] {
            let ended = tlo.launch_and_wait(id).await.unwrap();
            assert_eq!(
                ended.result,
                Some(json!(2)),
                "{store}: {id} read as it ended"
            );
        }
        for id in ["defined", "marked"] {
            eventually(&format!("{store}: {id} deleted"), || async {
                tlo.process(id).await.unwrap().is_none()
            })
            .await;
            let children = tlo
                .jobs(&tlo::JobFilter::default().parent(tlo::JobId::for_process(id)))
                .await
                .unwrap();
            assert!(children.is_empty(), "{store}: {id}'s children went with it");
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(tlo.process("kept").await.unwrap().is_some(), "{store}");
        tlo.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_process_is_launched_at_each_slot_and_skipped_while_blocked() {
    for tlo in on_every_store("schedule").await {
        let store = tlo.store().name();
        register(&tlo);
        let def = ProcessDefinition::new("ticker", "greet")
            .params(json!({"name": "clock"}))
            .schedule(Schedule::every(ms(150)).unwrap());
        tlo.define_process(def).await.unwrap();
        let shown = tlo.process("ticker").await.unwrap().unwrap();
        assert_eq!(shown.state, JobState::Idle, "{store}: defined idle");
        assert_eq!(
            shown.metadata["process"]["schedule"],
            json!("every 0.15s"),
            "{store}: the schedule is shown with the process"
        );
        tlo.start().unwrap();
        let attempts = || async { tlo.process("ticker").await.unwrap().unwrap().attempt };
        eventually("three scheduled launches", || async {
            attempts().await >= 3
        })
        .await;
        eventually("a scheduled run ended with its result", || async {
            let ran = tlo.process("ticker").await.unwrap().unwrap();
            ran.state == JobState::Done && ran.result == Some(json!("hello clock"))
        })
        .await;

        let block = tlo.block_launches(Map::new(), "paused");
        tokio::time::sleep(ms(300)).await; // a launch made just before the block ends
        let before = attempts().await;
        tokio::time::sleep(ms(600)).await;
        assert_eq!(attempts().await, before, "{store}: blocked slots pass");
        tlo.unblock_launches(block.id).await.unwrap();
        eventually("launched again", || async { attempts().await > before }).await;
        tlo.stop().await.unwrap();
    }
}
