//! Several `tlo worker` processes on one SQLite file: every job runs, none is lost, and a
//! worker killed with SIGKILL has its jobs rescued by the others.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tlo_core::{JobFilter, JobState, NewJob, Store};

const JOBS: usize = 300;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tlo-mp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn worker(config: &Path, id: &str) -> Worker {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tlo"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TLO_") {
            command.env_remove(key);
        }
    }
    Worker(
        command
            .arg("-c")
            .arg(config)
            .arg("worker")
            .env("TLO_WORKER_ID", id)
            .env("TLO_LEASE_SECS", "2")
            .env("TLO_POLL_INTERVAL_MS", "50")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Writes the config and enqueues `JOBS` jobs that each append their number to `out`.
async fn prepare(dir: &Path, sleep: &str) -> (PathBuf, PathBuf, tlo::SqliteStore) {
    let out = dir.join("executions.txt");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        format!(
            "[settings]\nconcurrency = 8\n\n[tasks.work]\ncommand = \"echo {{n}} >> {}; sleep {sleep}\"\nmax_attempts = 3\n",
            out.display()
        ),
    )
    .unwrap();
    let store = tlo::SqliteStore::open(dir.join("tlo.db")).unwrap();
    let jobs = (0..JOBS)
        .map(|n| {
            let mut job = NewJob::new("work", serde_json::json!({ "n": n }));
            job.max_attempts = 3;
            job
        })
        .collect();
    store.enqueue(jobs).await.unwrap();
    (config, out, store)
}

async fn wait_all_ended(store: &tlo::SqliteStore, limit: Duration) -> Vec<tlo::Job> {
    let deadline = Instant::now() + limit;
    loop {
        let jobs = store.list(&JobFilter::default()).await.unwrap();
        if jobs.iter().all(|j| j.state.is_end()) {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "jobs still active after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_sqlite_file_run_every_job_exactly_once() {
    let dir = scratch("two");
    let (config, out, store) = prepare(&dir, "0").await;
    let _a = worker(&config, "a");
    let _b = worker(&config, "b");
    let jobs = wait_all_ended(&store, Duration::from_secs(60)).await;
    assert!(jobs.iter().all(|j| j.state == JobState::Done), "all done");
    let counts = executions(&out);
    assert_eq!(counts.len(), JOBS, "every job ran");
    assert!(counts.values().all(|c| *c == 1), "each exactly once");
    let by_worker = |w: &str| jobs.iter().filter(|j| j.attempts[0].worker == w).count();
    assert_eq!(by_worker("a") + by_worker("b"), JOBS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_drain_loses_no_job() {
    let dir = scratch("kill");
    let (config, out, store) = prepare(&dir, "0.05").await;
    let mut victim = worker(&config, "victim");
    let _survivor = worker(&config, "survivor");
    // Let the victim take some jobs, then kill it without a chance to clean up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while executions(&out).len() < JOBS / 4 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    let jobs = wait_all_ended(&store, Duration::from_secs(60)).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Done),
        "{:?}",
        jobs.iter()
            .filter(|j| j.state != JobState::Done)
            .map(|j| (j.id, j.state, j.error.clone()))
            .collect::<Vec<_>>()
    );
    let counts = executions(&out);
    assert_eq!(counts.len(), JOBS, "every job ran");
    let repeats: usize = counts.values().map(|c| c - 1).sum();
    // The victim held its 8 running jobs, at most 8 claimed ahead, and at most 4 outcomes per
    // slot not yet recorded.
    let held = 8 + 8 + 4 * 8;
    assert!(
        repeats <= held,
        "re-executions ({repeats}) exceed what the victim held ({held})"
    );
    let rescued = jobs
        .iter()
        .filter(|j| {
            j.attempts
                .iter()
                .any(|a| a.worker == "victim" && a.error.is_some())
        })
        .count();
    assert!(
        rescued <= held,
        "the victim held at most {held} jobs, {rescued} rescued"
    );
    assert!(
        repeats <= rescued,
        "only rescued jobs ran twice ({repeats} > {rescued})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_run_survives_its_worker_being_killed() {
    let dir = scratch("workflow-kill");
    let out = dir.join("nodes.txt");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        format!(
            "[workflows.w.nodes.first]\ncommand = \"echo first >> {out}\"\n\n\
             [workflows.w.nodes.slow]\ncommand = \"sleep 2; echo slow >> {out}\"\nafter = [\"first\"]\nmax_attempts = 3\n\n\
             [workflows.w.nodes.last]\ncommand = \"echo last >> {out}\"\nafter = [\"slow\"]\n",
            out = out.display()
        ),
    )
    .unwrap();
    let mut victim = worker(&config, "victim");
    let submit = Command::new(env!("CARGO_BIN_EXE_tlo"))
        .arg("-c")
        .arg(&config)
        .args(["workflow", "run", "w"])
        .output()
        .unwrap();
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    let run = String::from_utf8_lossy(&submit.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
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
    let _survivor = worker(&config, "survivor");
    let store = tlo::SqliteStore::open(dir.join("tlo.db")).unwrap();
    let id: tlo::JobId = run.parse().unwrap();
    loop {
        let job = store.get(id).await.unwrap().unwrap();
        if job.state.is_end() {
            assert_eq!(job.state, JobState::Done, "{:?}", job.error);
            assert!(job.attempts.len() >= 2, "the coordinator was rescued");
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(20),
            "run never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = std::fs::read_to_string(&out).unwrap();
    assert!(lines.ends_with("slow\nlast\n"), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_worker_is_killed_is_rescued_and_runs_to_its_end() {
    let dir = scratch("process-kill");
    let out = dir.join("runs.txt");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        format!(
            "[tasks.long]\ncommand = \"echo started >> {out}; sleep 2; echo ended >> {out}\"\nmax_attempts = 3\n\n\
             [processes.nightly]\ntask = \"long\"\n",
            out = out.display()
        ),
    )
    .unwrap();
    let mut victim = worker(&config, "victim");
    let store = tlo::SqliteStore::open(dir.join("tlo.db")).unwrap();
    let id = tlo::JobId::for_process("nightly");
    let deadline = Instant::now() + Duration::from_secs(20);
    // The worker creates the process idle when it starts.
    while store.get(id).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the process was never defined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let launch = Command::new(env!("CARGO_BIN_EXE_tlo"))
        .arg("-c")
        .arg(&config)
        .args(["launch", "nightly"])
        .output()
        .unwrap();
    assert!(
        launch.status.success(),
        "{}",
        String::from_utf8_lossy(&launch.stderr)
    );
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("started")
    {
        assert!(Instant::now() < deadline, "the process never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        JobState::Running,
        "left running by the killed worker"
    );
    let _survivor = worker(&config, "survivor");
    loop {
        let job = store.get(id).await.unwrap().unwrap();
        if job.state.is_end() {
            assert_eq!(job.state, JobState::Done, "{:?}", job.error);
            assert_eq!(job.attempts.len(), 2, "rescued once, then ran to its end");
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(20),
            "the process never ended: {:?}",
            job.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two starts, one end: the killed worker's command died with it (it would otherwise have
    // run on beside the rescued run and written its own "ended").
    let lines = std::fs::read_to_string(&out).unwrap();
    assert_eq!(lines, "started\nstarted\nended\n");
}
