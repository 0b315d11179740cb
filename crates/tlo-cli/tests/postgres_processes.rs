//! Several `tlo worker` processes on one PostgreSQL schema: every job runs and its completion is
//! recorded exactly once; a worker killed with SIGKILL, or a server restart, loses no job.
//! Reads `TLO_TEST_DATABASE_URL`; fails when the server is unreachable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tlo::{JobFilter, JobState, PostgresOptions, PostgresStore, Store};
use tlo_core::NewJob;

fn url() -> String {
    std::env::var("TLO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    out: PathBuf,
    schema: String,
    store: PostgresStore,
}

async fn setup(name: &str, jobs: usize) -> Setup {
    let dir = std::env::temp_dir().join(format!("tlo-pgmp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("executions.txt");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        format!(
            "[tasks.work]\ncommand = \"echo {{n}} >> {}\"\nmax_attempts = 5\n",
            out.display()
        ),
    )
    .unwrap();
    let schema = format!("tlo_test_{}_{name}", std::process::id());
    let options = PostgresOptions {
        schema: schema.clone(),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&url(), options)
        .await
        .expect("PostgreSQL must be reachable (TLO_TEST_DATABASE_URL)");
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|n| {
                let mut job = NewJob::new("work", serde_json::json!({ "n": n }));
                job.max_attempts = 5;
                job
            })
            .collect();
        store.enqueue(batch).await.unwrap();
    }
    Setup {
        dir,
        config,
        out,
        schema,
        store,
    }
}

fn worker(setup: &Setup, id: &str) -> Worker {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tlo"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TLO_") {
            command.env_remove(key);
        }
    }
    Worker(
        command
            .arg("-c")
            .arg(&setup.config)
            .arg("worker")
            .env("TLO_TASK_STATE_STORE", "postgres")
            .env("TLO_DATABASE_URL", url())
            .env("TLO_DATABASE_SCHEMA", &setup.schema)
            .env("TLO_WORKER_ID", id)
            .env("TLO_CONCURRENCY", "8")
            .env("TLO_LEASE_SECS", "3")
            .env("TLO_POLL_INTERVAL_MS", "200")
            .current_dir(&setup.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn wait_until_all_ended(store: &PostgresStore, limit: Duration) {
    let active = JobFilter {
        states: vec![
            JobState::Scheduled,
            JobState::Running,
            JobState::CancelRequested,
            JobState::Cancelling,
        ],
        limit: Some(1),
        ..JobFilter::default()
    };
    let deadline = Instant::now() + limit;
    loop {
        match store.list(&active).await {
            Ok(jobs) if jobs.is_empty() => return,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "jobs still active after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn executions(out: &Path) -> HashMap<usize, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(out).unwrap_or_default().lines() {
        *counts
            .entry(line.trim().parse::<usize>().unwrap())
            .or_default() += 1;
    }
    counts
}

/// Every job done exactly once in the store; returns how many ran more than once.
async fn check(setup: &Setup, jobs: usize) -> usize {
    let done = setup
        .store
        .list(&JobFilter::default().state(JobState::Done))
        .await
        .unwrap();
    assert_eq!(done.len(), jobs, "every completion recorded");
    let counts = executions(&setup.out);
    assert_eq!(counts.len(), jobs, "every job executed");
    counts.values().map(|c| c - 1).sum()
}

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
    const JOBS: usize = 2_000;
    let setup = setup("kill", JOBS).await;
    let mut victim = worker(&setup, "victim");
    let _others: Vec<Worker> = ["b", "c"].iter().map(|id| worker(&setup, id)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while executions(&setup.out).len() < JOBS / 4 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    wait_until_all_ended(&setup.store, Duration::from_secs(120)).await;
    let repeats = check(&setup, JOBS).await;
    assert!(
        repeats <= 8,
        "{repeats} re-executions, more than the victim could hold (8)"
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
