//! Shared test helpers: a fast-ticking orchestrator isolated from the process environment.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use tlo::{SettingsBuilder, StopBehavior, Tlo, TloBuilder};

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Settings with short intervals so tests run quickly.
pub fn fast() -> SettingsBuilder {
    SettingsBuilder::default()
        .tick_interval(ms(50))
        .poll_interval(ms(50))
        .cancel_grace(ms(300))
        .progress_flush_interval(ms(20))
}

/// Builds without reading `TLO_*` variables, so the machine's environment cannot leak in.
pub fn build(builder: TloBuilder) -> Tlo {
    builder
        .build_with_env(|_| None)
        .expect("build orchestrator")
}

pub fn tlo() -> Tlo {
    build(Tlo::builder().settings(fast()))
}

pub fn tlo_with(settings: SettingsBuilder) -> Tlo {
    build(Tlo::builder().settings(settings))
}

/// Polls `check` until it returns true, failing after 5 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(ms(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Stops `tlo` with `behavior`, forces the stop after `patience`, and waits (at most 5 s) for
/// it to return; true when the stop was still waiting when forced.
pub async fn force_a_stop(tlo: &Tlo, behavior: StopBehavior, patience: Duration) -> bool {
    let stopping = tlo.clone();
    let stop = tokio::spawn(async move { stopping.stop_with(behavior).await });
    tokio::time::sleep(patience).await;
    let was_waiting = !stop.is_finished();
    tlo.force_stop();
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("a forced stop returns")
        .unwrap()
        .unwrap();
    was_waiting
}

/// Starts `tlo` on 3,000 no-op jobs, stops it with `behavior` mid-stream, and checks the jobs
/// the moment the stop returned: none left `running` (a Drain: all done). On the durable stores
/// a runner hands its outcome over and goes on: the stop must still wait until every outcome
/// is recorded.
pub async fn assert_a_stop_records_every_outcome(tlo: &Tlo, behavior: StopBehavior) {
    let noop = tlo
        .register("noop", tlo::TaskOptions::new(), |_ctx, _: ()| async {
            Ok::<_, String>(())
        })
        .unwrap();
    tlo.submit_batch(&noop, vec![(); 3000]).await.unwrap();
    tlo.start().unwrap();
    eventually("jobs done", || async {
        tlo.jobs(&tlo::JobFilter::default().state(tlo::JobState::Done))
            .await
            .unwrap()
            .len()
            >= 300
    })
    .await;
    tlo.stop_with(behavior).await.unwrap();
    let mut counts = std::collections::BTreeMap::<tlo::JobState, usize>::new();
    for job in tlo.jobs(&tlo::JobFilter::default()).await.unwrap() {
        *counts.entry(job.state).or_default() += 1;
    }
    let store = tlo.store().name();
    assert_eq!(
        counts.get(&tlo::JobState::Running),
        None,
        "{store} {behavior:?}: {counts:?}"
    );
    if behavior == StopBehavior::Drain {
        assert_eq!(
            counts.get(&tlo::JobState::Done),
            Some(&3000),
            "{store}: {counts:?}"
        );
    }
}

/// An orchestrator with `settings` on a fresh SQLite file named after `name` (in the temporary
/// directory, per process): the shared-store paths (batched outcomes and claims).
pub fn sqlite_tlo(settings: SettingsBuilder, name: &str) -> Tlo {
    let dir = std::env::temp_dir().join(format!("tlo-tests-{}", std::process::id()));
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = tlo::SqliteStore::open(path).expect("open SQLite");
    build(Tlo::builder().settings(settings).store(store))
}

/// Jobs claimed ahead (durable stores): runners going through fast jobs make claims take more
/// than they ask for; when the next jobs block, the ones claimed ahead of them that no runner
/// takes go back to `scheduled` without using up an attempt, and in the end every job runs
/// once. `tlo` must run 2 slots on a shared store and not be started.
pub async fn assert_jobs_claimed_ahead_go_back_when_no_runner_takes_them(tlo: &Tlo) {
    use std::collections::HashMap;
    use std::sync::Arc;

    const FAST: u64 = 300;
    const JOBS: u64 = FAST + 30;
    let runs = Arc::new(parking_lot::Mutex::new(HashMap::<u64, usize>::new()));
    let (open, gate) = tokio::sync::watch::channel(false);
    let counter = runs.clone();
    let step = tlo
        .register("step", tlo::TaskOptions::new(), move |_ctx, n: u64| {
            *counter.lock().entry(n).or_default() += 1;
            let mut gate = gate.clone();
            async move {
                // The two jobs after the fast ones hold both slots until the gate opens.
                if n == FAST || n == FAST + 1 {
                    let _ = gate.wait_for(|open| *open).await;
                }
                Ok::<_, String>(())
            }
        })
        .unwrap();
    tlo.submit_batch(&step, 0..JOBS).await.unwrap();
    tlo.start().unwrap();
    let store = tlo.store().name();
    let running = || async {
        tlo.jobs(&tlo::JobFilter::default().state(tlo::JobState::Running))
            .await
            .unwrap()
    };
    // Both slots blocked, and more jobs running than slots: claimed ahead of the runners.
    eventually(&format!("{store}: jobs claimed ahead"), || async {
        let blocked = {
            let runs = runs.lock();
            runs.contains_key(&FAST) && runs.contains_key(&(FAST + 1))
        };
        blocked && running().await.len() > 2
    })
    .await;
    // A cancel requested for one of them (when there are two: the other must be put back)
    // ends it without running it.
    let waiting: Vec<_> = running()
        .await
        .into_iter()
        .filter(|job| job.args.as_u64().unwrap() > FAST + 1)
        .collect();
    let cancelled = match waiting.as_slice() {
        [job, _, ..] => {
            tlo.cancel(job.id).await.unwrap();
            Some(job.args.as_u64().unwrap())
        }
        _ => None,
    };
    // No runner is free to take them: back to the queue, attempt not used up.
    eventually(&format!("{store}: jobs claimed ahead put back"), || async {
        running().await.len() == 2
    })
    .await;
    // (Concurrent claims may hand a later job out first: a few may have run already.)
    let mut put_back = 0;
    for job in tlo.jobs(&tlo::JobFilter::default()).await.unwrap() {
        let n = job.args.as_u64().unwrap();
        if Some(n) == cancelled {
            eventually(&format!("{store}: job {n} cancelled"), || async {
                tlo.job(job.id).await.unwrap().state == tlo::JobState::Cancelled
            })
            .await;
        } else if n > FAST + 1 && job.state != tlo::JobState::Done {
            assert_eq!(job.state, tlo::JobState::Scheduled, "{store}: job {n}");
            assert_eq!(job.attempt, 0, "{store}: job {n}");
            assert!(job.attempts.is_empty(), "{store}: job {n}");
            put_back += 1;
        }
    }
    assert!(put_back > 0, "{store}");
    open.send(true).unwrap();
    eventually(&format!("{store}: all done"), || async {
        tlo.jobs(&tlo::JobFilter::default().state(tlo::JobState::Done))
            .await
            .unwrap()
            .len()
            == JOBS as usize - usize::from(cancelled.is_some())
    })
    .await;
    tlo.stop().await.unwrap();
    let runs = runs.lock();
    let ran = JOBS as usize - usize::from(cancelled.is_some());
    assert_eq!(runs.len(), ran, "{store}");
    assert!(cancelled.is_none_or(|n| !runs.contains_key(&n)), "{store}");
    assert!(runs.values().all(|&n| n == 1), "{store}: {runs:?}");
}
