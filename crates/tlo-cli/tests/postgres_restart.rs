//! A PostgreSQL restart in the middle of a drain: the workers reconnect on their own and no job
//! is lost. Restarts the local server with `pg_ctlcluster`, so it lives in its own test binary
//! (cargo runs test binaries one at a time).

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

fn restart_server() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a local PostgreSQL cluster under /etc/postgresql")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a cluster version");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "restart failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_drain_loses_no_job() {
    const JOBS: usize = 2_000;
    let setup = setup("restart", JOBS).await;
    let _workers: Vec<Worker> = ["a", "b"].iter().map(|id| worker(&setup, id)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while executions(&setup.out).len() < JOBS / 4 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restart_server();
    wait_until_all_ended(&setup.store, Duration::from_secs(180)).await;
    let repeats = check(&setup, JOBS).await;
    assert!(
        repeats <= 16,
        "{repeats} re-executions, more than the workers could hold (16)"
    );
    setup.store.drop_schema().await.unwrap();
}
