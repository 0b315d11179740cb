//! Child jobs: run_child and parallel_group form a tree; failures and cancels propagate.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tlo::{ChildOptions, Error, JobFilter, JobState, SubmitOptions, TaskOptions, Tlo};

fn leaf(tlo: &Tlo) -> tlo::TaskRef<i64, i64> {
    tlo.register("leaf", TaskOptions::new(), |_ctx, n: i64| async move {
        tokio::time::sleep(Duration::from_millis(10 * (n.unsigned_abs() % 5))).await;
        if n < 0 {
            return Err(format!("negative {n}"));
        }
        Ok(n * 2)
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_child_returns_the_childs_result_and_builds_the_tree() {
    let tlo = tlo_with(fast().concurrency(1));
    let leaf = leaf(&tlo);
    let parent = tlo
        .register("parent", TaskOptions::new(), move |ctx, n: i64| {
            let leaf = leaf.clone();
            async move {
                let a = ctx.run_child(&leaf, n, ChildOptions::default()).await;
                let b = ctx.run_child(&leaf, n + 1, ChildOptions::default()).await;
                let (a, b) = (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?);
                Ok::<_, String>(a.result.unwrap() + b.result.unwrap())
            }
        })
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo
        .submit_with(&parent, 1, SubmitOptions::new().metadata("tenant", "acme"))
        .await
        .unwrap();
    assert_eq!(
        handle.result().await.unwrap(),
        2 + 4,
        "with a single worker slot"
    );
    let tree = tlo
        .jobs(&JobFilter::default().root(handle.id()))
        .await
        .unwrap();
    let shape: Vec<(u32, u32)> = tree.iter().map(|j| (j.depth, j.order)).collect();
    assert_eq!(shape, [(0, 0), (1, 0), (1, 1)], "sorted by depth, order");
    assert!(tree[1..].iter().all(|c| c.parent == Some(handle.id())));
    assert!(
        tree.iter().all(|j| j.metadata["tenant"] == "acme"),
        "metadata inherited"
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_child_is_an_error_naming_it_unless_survived() {
    let tlo = tlo();
    let leaf = leaf(&tlo);
    let strict = {
        let leaf = leaf.clone();
        tlo.register("strict", TaskOptions::new(), move |ctx, _: ()| {
            let leaf = leaf.clone();
            async move {
                ctx.run_child(&leaf, -1, ChildOptions::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .unwrap()
    };
    let lenient = tlo
        .register("lenient", TaskOptions::new(), move |ctx, _: ()| {
            let leaf = leaf.clone();
            async move {
                let options = ChildOptions {
                    survive_failure: true,
                    ..ChildOptions::default()
                };
                let outcome = ctx
                    .run_child(&leaf, -1, options)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(outcome.error)
            }
        })
        .unwrap();
    tlo.start().unwrap();
    let err = tlo
        .submit(&strict, ())
        .await
        .unwrap()
        .result()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("child `leaf` failed: negative -1"),
        "{err}"
    );
    let survived = tlo
        .submit(&lenient, ())
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(survived.as_deref(), Some("negative -1"));
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_group_limits_concurrency_and_a_failure_cancels_the_siblings() {
    let tlo = tlo_with(fast().concurrency(8));
    let (current, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, p) = (current.clone(), peak.clone());
    let child = tlo
        .register("child", TaskOptions::new(), move |ctx, ms: i64| {
            let (c, p) = (c.clone(), p.clone());
            async move {
                let now = c.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                let result = tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms.unsigned_abs())) => {
                        if ms < 0 { Err("failed on purpose".to_string()) } else { Ok(ms) }
                    }
                    _ = ctx.cancelled() => Err("cancelled".to_string()),
                };
                c.fetch_sub(1, Ordering::SeqCst);
                result
            }
        })
        .unwrap();
    let (group_child, failing_child) = (child.clone(), child.clone());
    let group = tlo
        .register("group", TaskOptions::new(), move |ctx, _: ()| {
            let child = group_child.clone();
            async move {
                let outcomes = ctx
                    .parallel_group(2, &child, vec![150, 10, 60, 20], ChildOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(
                    outcomes
                        .into_iter()
                        .map(|o| o.result.unwrap())
                        .collect::<Vec<_>>(),
                )
            }
        })
        .unwrap();
    let failing = tlo
        .register("failing", TaskOptions::new(), move |ctx, _: ()| {
            let child = failing_child.clone();
            async move {
                ctx.parallel_group(3, &child, vec![-20, 2000, 2000], ChildOptions::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .unwrap();
    tlo.start().unwrap();
    let order = tlo
        .submit(&group, ())
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(order, [10, 60, 20, 150], "completion order");
    assert_eq!(peak.load(Ordering::SeqCst), 2, "never more than the limit");
    let started = std::time::Instant::now();
    let handle = tlo.submit(&failing, ()).await.unwrap();
    let err = handle.result().await.unwrap_err();
    assert!(matches!(err, Error::JobFailed { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "siblings were cancelled"
    );
    let children = tlo
        .jobs(&JobFilter::default().parent(handle.id()))
        .await
        .unwrap();
    let states: Vec<JobState> = children.iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [JobState::Failed, JobState::Cancelled, JobState::Cancelled]
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parent_cancels_its_active_children() {
    let tlo = tlo();
    let waiter = tlo
        .register("waiter", TaskOptions::new(), |ctx, _: ()| async move {
            ctx.cancelled().await;
            Ok::<_, String>(())
        })
        .unwrap();
    let parent = tlo
        .register("parent", TaskOptions::new(), move |ctx, _: ()| {
            let waiter = waiter.clone();
            async move {
                ctx.run_child(&waiter, (), ChildOptions::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo.submit(&parent, ()).await.unwrap();
    eventually("child running", || async {
        let children = tlo
            .jobs(&JobFilter::default().parent(handle.id()))
            .await
            .unwrap();
        children
            .first()
            .is_some_and(|c| c.state == JobState::Running)
    })
    .await;
    handle.cancel().await.unwrap();
    assert_eq!(handle.wait().await.unwrap().state, JobState::Cancelled);
    let children = tlo
        .jobs(&JobFilter::default().parent(handle.id()))
        .await
        .unwrap();
    assert_eq!(children[0].state, JobState::Cancelled);
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_parallel_group_runs_every_child_once_with_all_its_outcomes() {
    let tlo = tlo();
    let double = tlo
        .register("double", TaskOptions::new(), |_ctx, n: u32| async move {
            Ok::<_, String>(n * 2)
        })
        .unwrap();
    let parent = tlo
        .register("wide", TaskOptions::new(), move |ctx, n: u32| {
            let double = double.clone();
            async move {
                let outcomes = ctx
                    .parallel_group(n as usize, &double, 0..n, tlo::ChildOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut results: Vec<u32> = outcomes.iter().filter_map(|o| o.result).collect();
                results.sort_unstable();
                Ok::<_, String>(results)
            }
        })
        .unwrap();
    tlo.start().unwrap();
    let results = tlo
        .submit(&parent, 500)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(results, (0..500).map(|n| n * 2).collect::<Vec<_>>());
    tlo.stop().await.unwrap();
}

/// A child that reports 50% with a message, then holds for a while before it ends.
fn half_way(tlo: &Tlo) -> tlo::TaskRef<u64, ()> {
    tlo.register(
        "half_way",
        TaskOptions::new(),
        |ctx, hold_ms: u64| async move {
            ctx.report_progress(Some(50.0), "half way");
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            Ok::<_, String>(())
        },
    )
    .unwrap()
}

async fn parent_percent(tlo: &Tlo, id: tlo::JobId, percent: f64) {
    eventually(&format!("the parent at {percent}%"), || async {
        tlo.job(id).await.unwrap().progress.percent == Some(percent)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_follows_sequential_children_and_a_group_on_average() {
    let tlo = tlo();
    let child = half_way(&tlo);
    let group_child = child.clone();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let steps = tlo
        .register("steps", TaskOptions::new(), move |ctx, hold: u64| {
            let (child, recorded) = (child.clone(), recorded.clone());
            async move {
                for step in 0..2 {
                    let follow = tlo::ChildProgress::sequential(step, 2);
                    ctx.run_child(&child, hold, ChildOptions::default().progress(follow))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let callback = tlo::ChildProgress::Callback(Arc::new(move |children| {
                    recorded.lock().push(children[0].percent);
                }));
                ctx.run_child(&child, 100, ChildOptions::default().progress(callback))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
        })
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo.submit(&steps, 600).await.unwrap();
    parent_percent(&tlo, handle.id(), 25.0).await;
    parent_percent(&tlo, handle.id(), 75.0).await;
    handle.result().await.unwrap();
    assert!(seen.lock().contains(&Some(50.0)), "{:?}", seen.lock());
    let log = tlo.logs(handle.id()).await.unwrap();
    let relayed = log.iter().filter(|l| l.message == "half way").count();
    assert_eq!(relayed, 2, "each child's message once: {log:?}");

    let child = group_child;
    let group = tlo
        .register("group", TaskOptions::new(), move |ctx, hold: u64| {
            let child = child.clone();
            async move {
                let follow = ChildOptions::default().progress(tlo::ChildProgress::Average);
                ctx.parallel_group(4, &child, [hold, hold, hold, hold], follow)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
        })
        .unwrap();
    let handle = tlo.submit(&group, 600).await.unwrap();
    parent_percent(&tlo, handle.id(), 50.0).await;
    handle.result().await.unwrap();
    assert_eq!(
        tlo.job(handle.id()).await.unwrap().progress.percent,
        Some(100.0)
    );
    tlo.stop().await.unwrap();
}
