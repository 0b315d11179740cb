//! Worker processes on a PostgreSQL schema, for the multi-process tests: a config whose task
//! appends its number to a file, a schema of jobs, `tlo worker` processes, and the checks.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tlo::{JobFilter, JobState, PostgresOptions, PostgresStore, Store};
use tlo_core::NewJob;

pub fn url() -> String {
    std::env::var("TLO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub struct Worker(pub Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Setup {
    /// The server's URL with an `application_name` of this setup's own, which its workers'
    /// connections carry (so that a test can find and end them).
    pub worker_url: String,
    pub application_name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub out: PathBuf,
    pub schema: String,
    pub store: PostgresStore,
}

pub async fn setup(name: &str, jobs: usize) -> Setup {
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
    let application_name = schema.clone();
    let base = url();
    let separator = if base.contains('?') { '&' } else { '?' };
    Setup {
        worker_url: format!("{base}{separator}application_name={application_name}"),
        application_name,
        dir,
        config,
        out,
        schema,
        store,
    }
}

/// `tlo` on the setup's config and schema, the machine's `TLO_*` variables cleared.
pub fn tlo(setup: &Setup) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tlo"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TLO_") {
            command.env_remove(key);
        }
    }
    command
        .arg("-c")
        .arg(&setup.config)
        .env("TLO_TASK_STATE_STORE", "postgres")
        .env("TLO_DATABASE_URL", &setup.worker_url)
        .env("TLO_DATABASE_SCHEMA", &setup.schema);
    command
}

pub fn worker(setup: &Setup, id: &str) -> Worker {
    Worker(
        tlo(setup)
            .arg("worker")
            .env("TLO_WORKER_ID", id)
            .env("TLO_CONCURRENCY", "8")
            .env("TLO_LEASE_SECS", "3")
            .env("TLO_POLL_INTERVAL_MS", "200")
            .current_dir(&setup.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log(setup, id)).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Where worker `id` writes its log.
pub fn log(setup: &Setup, id: &str) -> PathBuf {
    setup.dir.join(format!("worker-{id}.log"))
}

/// Waits until a quarter of `jobs` have run at least once.
pub async fn wait_for_a_quarter(setup: &Setup, jobs: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while executions(&setup.out).len() < jobs / 4 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs done after an attempt that ended in an error (a rescue, say) by `worker`, or by any
/// worker (`None`).
pub async fn retried_after(setup: &Setup, worker: Option<&str>) -> usize {
    let done = setup
        .store
        .list(&JobFilter::default().state(JobState::Done))
        .await
        .unwrap();
    done.iter()
        .filter(|job| {
            job.attempts
                .iter()
                .any(|a| worker.is_none_or(|w| a.worker == w) && a.error.is_some())
        })
        .count()
}

pub async fn wait_until_all_ended(store: &PostgresStore, limit: Duration) {
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

pub fn executions(out: &Path) -> HashMap<usize, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(out).unwrap_or_default().lines() {
        *counts
            .entry(line.trim().parse::<usize>().unwrap())
            .or_default() += 1;
    }
    counts
}

/// Every job done exactly once in the store; returns how many ran more than once.
pub async fn check(setup: &Setup, jobs: usize) -> usize {
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
