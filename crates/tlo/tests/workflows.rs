//! Workflow runs: dependencies, upstream results, skip on failure, trigger rules, parallelism,
//! per-node timeouts, cancel, reports; on memory and on SQLite.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tlo::{
    Error, JobState, Node, RunOptions, TaskOptions, Tlo, TriggerRule, UPSTREAM_FAILED, Workflow,
};

/// `value` returns its `n` argument plus the sum of its upstream results.
fn register_value(tlo: &Tlo) {
    tlo.register(
        "value",
        TaskOptions::new(),
        |_ctx, args: Value| async move {
            let own = args["n"].as_i64().unwrap_or(0);
            let upstream: i64 = args["upstream"]
                .as_object()
                .map(|m| m.values().filter_map(Value::as_i64).sum())
                .unwrap_or(0);
            Ok::<_, String>(own + upstream)
        },
    )
    .unwrap();
    tlo.register("fail", TaskOptions::new(), |_ctx, _: Value| async {
        Err::<(), _>("broken on purpose")
    })
    .unwrap();
}

fn node(name: &str, n: i64) -> Node {
    Node::new(name, "value").args(json!({ "n": n }))
}

async fn run_diamond(tlo: &Tlo) {
    register_value(tlo);
    tlo.register_workflow(
        Workflow::builder("diamond")
            .node(node("a", 1))
            .node(node("b", 10).after(["a"]))
            .node(node("c", 100).after(["a"]))
            .node(node("d", 1000).after(["b", "c"]))
            .build()
            .unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let report = tlo
        .run_workflow("diamond", json!({}))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(report.state, JobState::Done, "{report:?}");
    let result = |name: &str| {
        report
            .nodes
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.result.clone())
    };
    assert_eq!(result("a"), Some(json!(1)));
    assert_eq!(result("b"), Some(json!(11)));
    assert_eq!(result("c"), Some(json!(101)));
    assert_eq!(result("d"), Some(json!(1112)), "d sees b and c by name");
    let names: Vec<&str> = report.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert!(
        report
            .nodes
            .iter()
            .all(|n| n.duration_s.is_some() && n.attempts == 1)
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_after_its_dependencies_with_their_results_by_name() {
    run_diamond(&tlo()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_sqlite_survives_in_the_file() {
    let path = std::env::temp_dir().join(format!("tlo-wf-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let store = tlo::SqliteStore::open(&path).unwrap();
    let locker = store.locker();
    run_diamond(&build(
        Tlo::builder().settings(fast()).store(store).locker(locker),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_node_skips_its_descendants_and_independent_branches_carry_on() {
    let tlo = tlo();
    register_value(&tlo);
    tlo.register_workflow(
        Workflow::builder("w")
            .node(Node::new("broken", "fail"))
            .node(node("child", 1).after(["broken"]))
            .node(node("grandchild", 1).after(["child"]))
            .node(node("independent", 5))
            .node(
                node("cleanup", 0)
                    .after(["child"])
                    .trigger(TriggerRule::AllDone),
            )
            .node(
                Node::new("alert", "value")
                    .after(["broken"])
                    .trigger(TriggerRule::OneFailed),
            )
            .node(
                Node::new("no_alert", "value")
                    .after(["independent"])
                    .trigger(TriggerRule::OneFailed),
            )
            .build()
            .unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let report = tlo
        .run_workflow("w", json!({}))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let state = |name: &str| {
        let node = report.nodes.iter().find(|n| n.name == name).unwrap();
        (node.state, node.error.clone())
    };
    assert_eq!(report.state, JobState::Failed);
    assert!(
        report.error.as_deref().unwrap().contains("broken"),
        "{:?}",
        report.error
    );
    assert_eq!(state("broken").0, JobState::Failed);
    assert_eq!(
        state("child"),
        (JobState::Skipped, Some(UPSTREAM_FAILED.into()))
    );
    assert_eq!(
        state("grandchild"),
        (JobState::Skipped, Some(UPSTREAM_FAILED.into()))
    );
    assert_eq!(state("independent").0, JobState::Done);
    assert_eq!(
        state("cleanup").0,
        JobState::Done,
        "all_done runs after a skip"
    );
    assert_eq!(
        state("alert").0,
        JobState::Done,
        "one_failed runs after a failure"
    );
    assert_eq!(
        state("no_alert").0,
        JobState::Skipped,
        "one_failed with nothing failed"
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parallelism_limit_holds_and_per_node_timeouts_fail_the_node() {
    let tlo = tlo_with(fast().concurrency(8));
    let (current, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, p) = (current.clone(), peak.clone());
    tlo.register("sleep", TaskOptions::new(), move |_ctx, args: Value| {
        let (c, p) = (c.clone(), p.clone());
        async move {
            let now = c.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(args["ms"].as_u64().unwrap_or(30))).await;
            c.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>(())
        }
    })
    .unwrap();
    let mut builder = Workflow::builder("fan");
    for i in 0..6 {
        builder = builder.node(Node::new(format!("n{i}"), "sleep"));
    }
    let slow = Node::new("slow", "sleep")
        .args(json!({"ms": 5000}))
        .timeout(Duration::from_millis(100));
    let after = Node::new("after_slow", "sleep").after(["slow"]);
    tlo.register_workflow(builder.node(slow).node(after).build().unwrap())
        .unwrap();
    tlo.start().unwrap();
    let run = tlo
        .run_workflow_with(
            "fan",
            json!({}),
            RunOptions {
                parallelism: Some(2),
            },
        )
        .await
        .unwrap();
    let report = run.wait().await.unwrap();
    assert_eq!(peak.load(Ordering::SeqCst), 2, "at most 2 nodes at once");
    let slow = report.nodes.iter().find(|n| n.name == "slow").unwrap();
    assert_eq!(
        (slow.state, slow.error.as_deref()),
        (JobState::Failed, Some("Timeout after 0.1s"))
    );
    let after = report
        .nodes
        .iter()
        .find(|n| n.name == "after_slow")
        .unwrap();
    assert_eq!(after.state, JobState::Skipped);
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_cancels_its_nodes() {
    let tlo = tlo();
    tlo.register("wait", TaskOptions::new(), |ctx, _: Value| async move {
        ctx.cancelled().await;
        Ok::<_, String>(())
    })
    .unwrap();
    tlo.register_workflow(
        Workflow::builder("w")
            .node(Node::new("first", "wait"))
            .node(Node::new("second", "wait").after(["first"]))
            .build()
            .unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let run = tlo.run_workflow("w", json!({})).await.unwrap();
    eventually("first node running", || async {
        run.report().await.unwrap().nodes[0].state == JobState::Running
    })
    .await;
    run.cancel().await.unwrap();
    let report = run.wait().await.unwrap();
    assert_eq!(report.state, JobState::Cancelled);
    assert!(
        report.nodes.iter().all(|n| n.state == JobState::Cancelled),
        "{report:?}"
    );
    tlo.stop().await.unwrap();
}

#[tokio::test]
async fn running_an_unknown_workflow_or_a_node_without_its_task_is_an_error() {
    let tlo = tlo();
    assert!(matches!(
        tlo.run_workflow("nope", json!({})).await,
        Err(Error::UnknownTask(_))
    ));
    tlo.register_workflow(
        Workflow::builder("w")
            .node(Node::new("a", "missing"))
            .build()
            .unwrap(),
    )
    .unwrap();
    let err = tlo.run_workflow("w", json!({})).await.unwrap_err();
    assert!(
        matches!(err, Error::UnknownTask(ref t) if t == "missing"),
        "{err}"
    );
    assert!(
        tlo.jobs(&Default::default()).await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stop_mid_run_returns_and_the_run_resumes_on_restart() {
    let tlo = tlo();
    register_value(&tlo);
    tlo.register("pause", TaskOptions::new(), |_ctx, _: Value| async {
        tokio::time::sleep(ms(200)).await;
        Ok::<_, String>(1)
    })
    .unwrap();
    tlo.register_workflow(
        Workflow::builder("w")
            .node(Node::new("slow", "pause"))
            .node(node("after", 10).after(["slow"]))
            .build()
            .unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let run = tlo.run_workflow("w", json!({})).await.unwrap();
    eventually("slow running", || async {
        run.report().await.unwrap().nodes[0].state == JobState::Running
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), tlo.stop())
        .await
        .expect("a drain does not wait for the whole run")
        .unwrap();
    let report = run.report().await.unwrap();
    assert_eq!(
        report.state,
        JobState::Scheduled,
        "the run waits for workers again"
    );
    assert_eq!(
        report.nodes[0].state,
        JobState::Done,
        "the running node finished"
    );
    tlo.start().unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("the run resumes")
        .unwrap();
    assert_eq!(report.state, JobState::Done);
    assert_eq!(report.nodes[1].result, Some(json!(11)));
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_progresses_with_a_single_worker_slot() {
    let tlo = tlo_with(fast().concurrency(1));
    register_value(&tlo);
    tlo.register_workflow(
        Workflow::builder("w")
            .node(node("a", 1))
            .node(node("b", 2).after(["a"]))
            .build()
            .unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let run = tlo.run_workflow("w", json!({})).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(5), run.wait())
        .await
        .expect("the coordinator does not hold the only slot")
        .unwrap();
    assert_eq!(report.state, JobState::Done);
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cancelled_before_its_coordinator_starts_is_respected() {
    let tlo = tlo();
    register_value(&tlo);
    tlo.register_workflow(
        Workflow::builder("pair")
            .node(node("a", 1))
            .node(node("b", 2).after(["a"]))
            .node(node("solo", 3))
            .build()
            .unwrap(),
    )
    .unwrap();
    // Not started yet: the coordinator's first attempt sees nodes it did not create this way.
    let run = tlo.run_workflow("pair", json!({})).await.unwrap();
    let before = run.report().await.unwrap();
    tlo.cancel(before.nodes[0].job).await.unwrap();
    tlo.start().unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("the run ends")
        .unwrap();
    let state = |name: &str| {
        let node = report.nodes.iter().find(|n| n.name == name).unwrap();
        (node.state, node.error.clone())
    };
    assert_eq!(state("a").0, JobState::Cancelled);
    assert_eq!(
        state("b"),
        (JobState::Skipped, Some(UPSTREAM_FAILED.into()))
    );
    assert_eq!(
        state("solo").0,
        JobState::Done,
        "independent nodes carry on"
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_interrupted_by_a_forced_stop_finishes_after_a_restart() {
    let tlo = tlo();
    register_value(&tlo);
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    // Endless on its first run, not cancellable: only a forced stop ends it.
    tlo.register(
        "stubborn",
        TaskOptions::new().cancellable(false),
        move |_ctx, _: Value| {
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                Ok::<_, String>(5)
            }
        },
    )
    .unwrap();
    tlo.register_workflow(
        Workflow::builder("interrupted")
            .node(node("a", 1))
            .node(Node::new("slow", "stubborn").after(["a"]))
            .node(node("last", 10).after(["slow"]))
            .build()
            .unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let run = tlo.run_workflow("interrupted", json!({})).await.unwrap();
    eventually("the slow node runs", || async {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(force_a_stop(&tlo, tlo::StopBehavior::Drain, ms(200)).await);
    tlo.start().unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("the run finishes after the restart")
        .unwrap();
    assert_eq!(report.state, JobState::Done, "{:?}", report.error);
    let last = report.nodes.iter().find(|n| n.name == "last").unwrap();
    assert_eq!(last.result, Some(json!(15)), "last = 10 + slow's 5");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the slow node ran again");
    tlo.stop().await.unwrap();
}
