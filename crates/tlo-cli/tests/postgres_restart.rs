//! A PostgreSQL restart in the middle of a drain: the workers reconnect on their own, say so
//! once, and lose no job. Stops the local server for two seconds and starts it again with
//! `pg_ctlcluster`, so it lives in its own test binary (cargo runs test binaries one at a
//! time). It restarts the first cluster under `/etc/postgresql` and checks that the server
//! behind `TLO_TEST_DATABASE_URL` is the one that restarted.

mod pg_workers;

use std::process::Command;
use std::time::{Duration, Instant};

use pg_workers::*;

fn restart_server() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a local PostgreSQL cluster under /etc/postgresql")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a cluster version");
    // Down for two seconds: long enough for every worker's claims to fail several polls over.
    for (action, pause) in [("stop", 2_000), ("start", 0)] {
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", action])
            .status()
            .expect("pg_ctlcluster");
        assert!(status.success(), "{action} failed: {status}");
        std::thread::sleep(Duration::from_millis(pause));
    }
}

/// When the server behind the tests' URL started.
async fn server_start() -> String {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .unwrap();
    row.get(0)
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
    let started_before = server_start().await;
    restart_server();
    wait_until_all_ended(&setup.store, Duration::from_secs(180)).await;
    assert_ne!(
        server_start().await,
        started_before,
        "the server the tests use (TLO_TEST_DATABASE_URL) was restarted"
    );
    // The LISTEN connection may come back after the drain (its backoff reaches 5 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs: String = ["a", "b"]
            .iter()
            .map(|id| std::fs::read_to_string(log(&setup, id)).unwrap())
            .collect();
        if logs.contains("lost the LISTEN connection") && logs.contains("listening again") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workers say what happened:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let repeats = check(&setup, JOBS).await;
    // Each worker held its 8 running jobs, at most 8 claimed ahead, and at most 4 outcomes per
    // slot not yet recorded.
    let held = 2 * (8 + 8 + 4 * 8);
    assert!(
        repeats <= held,
        "{repeats} re-executions, more than the workers could hold ({held})"
    );
    // An outage is logged once per worker, not once per poll (200 ms here: about ten), and
    // so is the recovery.
    for id in ["a", "b"] {
        let log = std::fs::read_to_string(log(&setup, id)).unwrap();
        let failures = log
            .lines()
            .filter(|line| line.contains("WARN") && line.contains("claiming jobs failed"))
            .count();
        assert!(failures <= 2, "{failures} warnings for one outage:\n{log}");
        if failures > 0 {
            assert!(log.contains("claiming jobs works again"), "{log}");
        }
    }
    setup.store.drop_schema().await.unwrap();
}
