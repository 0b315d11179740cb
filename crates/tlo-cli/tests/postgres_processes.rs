//! Several `tlo worker` processes on one PostgreSQL schema: every job runs and its completion is
//! recorded exactly once; a worker killed with SIGKILL loses no job; migrations at start.
//! Reads `TLO_TEST_DATABASE_URL`; fails when the server is unreachable.

mod pg_workers;

use std::process::Command;
use std::time::{Duration, Instant};

use pg_workers::*;
use tlo::{JobState, PostgresOptions, PostgresStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_drain_ten_thousand_jobs_each_exactly_once() {
    const JOBS: usize = 10_000;
    let setup = setup("three", JOBS).await;
    let _workers: Vec<Worker> = ["a", "b", "c"]
        .iter()
        .map(|id| worker(&setup, id))
        .collect();
    wait_until_all_ended(&setup.store, Duration::from_secs(240)).await;
    assert_eq!(check(&setup, JOBS).await, 0, "no job executed twice");
    setup.store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_drain_loses_no_job() {
    const JOBS: usize = 10_000;
    let setup = setup("kill", JOBS).await;
    let mut victim = worker(&setup, "victim");
    let _others: Vec<Worker> = ["b", "c"].iter().map(|id| worker(&setup, id)).collect();
    wait_for_a_quarter(&setup, JOBS).await;
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    wait_until_all_ended(&setup.store, Duration::from_secs(180)).await;
    let repeats = check(&setup, JOBS).await;
    // The jobs the victim held are those whose attempt there ended in the rescue's error: at
    // most its 8 running jobs, 8 claimed ahead, and 4 outcomes per slot not yet recorded.
    let held = retried_after(&setup, Some("victim")).await;
    assert!(held <= 8 + 8 + 4 * 8, "the victim held {held} jobs");
    // Only a job whose attempt ended in an error ran again: the victim's, or (on a loaded
    // machine) one whose lease a surviving worker could not renew in time.
    let retried = retried_after(&setup, None).await;
    assert!(
        repeats <= retried,
        "{repeats} re-executions, more than the jobs retried ({retried}; {held} the victim's)"
    );
    setup.store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_whose_connections_are_killed_carry_on_and_lose_no_job() {
    const JOBS: usize = 3_000;
    let setup = setup("backends", JOBS).await;
    let _workers: Vec<Worker> = ["a", "b"].iter().map(|id| worker(&setup, id)).collect();
    wait_for_a_quarter(&setup, JOBS).await;
    // End every connection of the workers (pool and LISTEN), three times over.
    let (admin, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut ended = 0;
    for _ in 0..3 {
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1",
                &[&setup.application_name],
            )
            .await
            .unwrap();
        ended += rows.len();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(ended >= 4, "only {ended} connections ended");
    wait_until_all_ended(&setup.store, Duration::from_secs(120)).await;
    let repeats = check(&setup, JOBS).await;
    // A claim or an outcome cut off may leave jobs to the rescue: at most what both held, three
    // times over.
    assert!(
        repeats <= 3 * 2 * (8 + 8 + 4 * 8),
        "{repeats} re-executions"
    );
    let logs = ["a", "b"]
        .iter()
        .map(|id| std::fs::read_to_string(log(&setup, id)).unwrap())
        .collect::<String>();
    assert!(
        logs.contains("lost the LISTEN connection"),
        "the workers say what happened:\n{logs}"
    );
    setup.store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_at_start_unless_disabled_and_always_with_tlo_migrate() {
    let schema = format!("tlo_test_{}_migrate", std::process::id());
    let dir = std::env::temp_dir().join(format!("tlo-pgmp-{}-migrate", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tlo.toml");
    std::fs::write(&config, "[tasks.t]\ncommand = \"true\"\n").unwrap();
    let tlo = |args: &[&str], migrate: &str| {
        Command::new(env!("CARGO_BIN_EXE_tlo"))
            .arg("-c")
            .arg(&config)
            .args(args)
            .env("TLO_TASK_STATE_STORE", "postgres")
            .env("TLO_DATABASE_URL", url())
            .env("TLO_DATABASE_SCHEMA", &schema)
            .env("TLO_MIGRATE", migrate)
            .output()
            .unwrap()
    };
    let refused = tlo(&["jobs"], "false");
    assert_eq!(
        refused.status.code(),
        Some(1),
        "no tables without migrations"
    );
    let migrated = tlo(&["migrate"], "false");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(tlo(&["jobs"], "false").status.success());
    let store = PostgresStore::connect_with(
        &url(),
        PostgresOptions {
            schema: schema.clone(),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "already up to date"
    );
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_run_survives_its_worker_being_killed() {
    let setup = setup("wfkill", 0).await;
    let out = setup.dir.join("nodes.txt");
    std::fs::write(
        &setup.config,
        format!(
            "[workflows.w.nodes.first]\ncommand = \"echo first >> {out}\"\n\n\
             [workflows.w.nodes.slow]\ncommand = \"sleep 2; echo slow >> {out}\"\nafter = [\"first\"]\nmax_attempts = 3\n\n\
             [workflows.w.nodes.last]\ncommand = \"echo last >> {out}\"\nafter = [\"slow\"]\n",
            out = out.display()
        ),
    )
    .unwrap();
    let mut victim = worker(&setup, "victim");
    let submit = tlo(&setup).args(["workflow", "run", "w"]).output().unwrap();
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    let run: tlo::JobId = String::from_utf8_lossy(&submit.stdout)
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("first")
    {
        assert!(Instant::now() < deadline, "the first node never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // `slow` is running now
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    let _survivor = worker(&setup, "survivor");
    loop {
        let job = setup.store.get(run).await.unwrap().unwrap();
        if job.state.is_end() {
            assert_eq!(job.state, JobState::Done, "{:?}", job.error);
            assert!(job.attempts.len() >= 2, "the coordinator was rescued");
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "run never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = std::fs::read_to_string(&out).unwrap();
    assert!(lines.ends_with("slow\nlast\n"), "{lines}");
    setup.store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_process_reaches_a_running_shell_job_within_a_second() {
    let setup = setup("cancel", 0).await;
    let started = setup.dir.join("started");
    let reached = setup.dir.join("reached");
    // The command notes when it starts and when the cancel reaches it (SIGTERM), in ns.
    std::fs::write(
        &setup.config,
        format!(
            "[tasks.slow]\ncommand = \"trap 'date +%s%N > {reached}; exit 1' TERM; \
             date +%s%N > {started}; sleep 30 & wait\"\n",
            reached = reached.display(),
            started = started.display()
        ),
    )
    .unwrap();
    let _worker = worker(&setup, "a");
    let run = |args: &[&str]| tlo(&setup).args(args).output().unwrap();
    let submitted = run(&["submit", "slow"]);
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let id = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = run(&["cancel", &id]);
    // The request is in the store once `tlo cancel` returns: the clock starts there.
    let asked = std::time::SystemTime::now();
    assert!(
        cancelled.status.success(),
        "{}",
        String::from_utf8_lossy(&cancelled.stderr)
    );
    while std::fs::read_to_string(&reached).map_or(true, |t| t.trim().is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the cancel never reached the job"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reached_ns: u128 = std::fs::read_to_string(&reached)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let asked_ns = asked
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let took = Duration::from_nanos(reached_ns.saturating_sub(asked_ns) as u64);
    assert!(took < Duration::from_secs(1), "the cancel took {took:?}");
    let id: tlo::JobId = id.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = setup.store.get(id).await.unwrap().unwrap();
        if job.state.is_end() {
            assert_eq!(job.state, JobState::Cancelled, "{:?}", job.error);
            break;
        }
        assert!(Instant::now() < deadline, "still {}", job.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup.store.drop_schema().await.unwrap();
}
