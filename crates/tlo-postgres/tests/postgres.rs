//! What only PostgreSQL does: concurrent migrators, SKIP LOCKED claims from many workers,
//! enqueue inside the caller's transaction, LISTEN/NOTIFY wake-ups, clear connection errors.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tlo_core::{ClaimRequest, JobFilter, NewJob, QueueDemand, Store, Utc};
use tlo_postgres::{PostgresOptions, PostgresStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_once() {
    let schema = common::schema().await;
    let connects = (0..4).map(|_| {
        let options = PostgresOptions {
            schema: schema.clone(),
            pool_size: 1,
            ..PostgresOptions::default()
        };
        tokio::spawn(async move { PostgresStore::connect_with(&common::url(), options).await })
    });
    // Spawned all before any is awaited: they run at once.
    let connects: Vec<_> = connects.collect();
    let mut stores = Vec::new();
    for connect in connects {
        stores.push(connect.await.unwrap().expect("every migrator succeeds"));
    }
    assert!(
        stores[0].migrate().await.unwrap().is_empty(),
        "already up to date"
    );
    stores[0].drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_take_a_job_twice() {
    let store = Arc::new(common::store().await);
    let jobs: Vec<NewJob> = (0..1000)
        .map(|n| NewJob::new("t", serde_json::json!(n)))
        .collect();
    store.enqueue(jobs).await.unwrap();
    let workers = (0..4).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let request = ClaimRequest {
                    worker: format!("w{w}"),
                    queues: vec![QueueDemand {
                        queue: "default".into(),
                        limit: 10,
                    }],
                    limit: 10,
                    now: Utc::now(),
                    lease: Duration::from_secs(30),
                };
                let claimed = store.claim(&request).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().map(|j| j.id));
            }
        })
    });
    let workers: Vec<_> = workers.collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 1000, "every job claimed");
    assert_eq!(unique.len(), 1000, "none twice");
    store.drop_schema().await.unwrap();
}

/// Guards the pipelined claim: its write-back is sent with the COMMIT, and on a connection that
/// had not prepared it yet, it once went out after the COMMIT, outside the transaction, when the
/// rows were no longer locked: a claim arriving meanwhile took them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_on_fresh_connections_never_take_a_job_twice() {
    const ROUNDS: usize = 15;
    const WORKERS: usize = 6;
    const EACH: usize = 4;
    let store = common::store().await;
    let jobs: Vec<NewJob> = (0..ROUNDS * WORKERS * EACH)
        .map(|n| NewJob::new("t", serde_json::json!(n)))
        .collect();
    store.enqueue(jobs).await.unwrap();
    let request = |queue: &str, w: usize| ClaimRequest {
        worker: format!("w{w}"),
        queues: vec![QueueDemand {
            queue: queue.into(),
            limit: EACH,
        }],
        limit: EACH,
        now: Utc::now(),
        lease: Duration::from_secs(30),
    };
    let mut all = Vec::new();
    for _ in 0..ROUNDS {
        // Every worker on a new connection that has prepared the claim (an empty queue's) but
        // not the write-back; then all claim at once.
        let start = Arc::new(tokio::sync::Barrier::new(WORKERS));
        let workers = (0..WORKERS).map(|w| {
            let (schema, start) = (store.schema().to_owned(), start.clone());
            tokio::spawn(async move {
                let options = PostgresOptions {
                    schema,
                    pool_size: 1,
                    ..PostgresOptions::default()
                };
                let fresh = PostgresStore::connect_with(&common::url(), options)
                    .await
                    .unwrap();
                assert!(fresh.claim(&request("empty", w)).await.unwrap().is_empty());
                start.wait().await;
                fresh.claim(&request("default", w)).await.unwrap()
            })
        });
        let workers: Vec<_> = workers.collect();
        for worker in workers {
            all.extend(worker.await.unwrap().into_iter().map(|j| j.id));
        }
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), unique.len(), "no job claimed twice");
    assert_eq!(unique.len(), ROUNDS * WORKERS * EACH, "every job claimed");
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_the_callers_transaction_follows_its_fate() {
    let store = common::store().await;
    let (mut client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let tx = client.transaction().await.unwrap();
    store
        .enqueue_in(&tx, vec![NewJob::new("t", serde_json::json!(1))])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(store.list(&JobFilter::default()).await.unwrap().is_empty());
    let tx = client.transaction().await.unwrap();
    let ids = store
        .enqueue_in(&tx, vec![NewJob::new("t", serde_json::json!(2))])
        .await
        .unwrap();
    assert!(
        store.get(ids[0].id).await.unwrap().is_none(),
        "invisible before commit"
    );
    tx.commit().await.unwrap();
    assert!(store.get(ids[0].id).await.unwrap().is_some());
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_notifies_listeners_in_other_connections() {
    let store = common::store().await;
    let woken = Arc::new(AtomicUsize::new(0));
    let w = woken.clone();
    store.subscribe_wakeups(Arc::new(move || {
        w.fetch_add(1, Ordering::SeqCst);
    }));
    // The listener wakes once when it starts listening.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while woken.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = woken.load(Ordering::SeqCst);
    let other = PostgresStore::connect_with(
        &common::url(),
        PostgresOptions {
            schema: store.schema().to_owned(),
            pool_size: 1,
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap();
    other
        .enqueue(vec![NewJob::new("t", serde_json::json!(1))])
        .await
        .unwrap();
    while woken.load(Ordering::SeqCst) == before {
        assert!(tokio::time::Instant::now() < deadline, "no notification");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.drop_schema().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_is_named_without_its_password() {
    let err = PostgresStore::connect("postgres://app:hunter2@127.0.0.1:1/db")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("postgres://app@127.0.0.1:1/db"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// A TCP proxy in front of the tests' server that counts the round trips its clients make: the
/// `Sync` messages of PostgreSQL's extended query protocol (each ends one exchange). Returns
/// the URL to connect through and the count.
async fn counting_proxy() -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target: tokio_postgres::Config = common::url().parse().unwrap();
    let host = match &target.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the round-trip test needs a TCP server, not {other:?}"),
    };
    let port = target.get_ports().first().copied().unwrap_or(5432);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxied = listener.local_addr().unwrap().port();
    let syncs = Arc::new(AtomicUsize::new(0));
    let counted = syncs.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .unwrap();
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            });
            let counted = counted.clone();
            tokio::spawn(async move {
                // Client messages: the startup message (length, no type byte), then each a type
                // byte and a length that counts itself.
                let (mut pending, mut started, mut chunk) = (Vec::new(), false, [0u8; 8192]);
                loop {
                    let n = match from_client.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if to_server.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    pending.extend_from_slice(&chunk[..n]);
                    loop {
                        let skip = usize::from(started);
                        if pending.len() < skip + 4 {
                            break;
                        }
                        let len = u32::from_be_bytes(pending[skip..skip + 4].try_into().unwrap());
                        let whole = skip + len as usize;
                        if pending.len() < whole {
                            break;
                        }
                        if started && pending[0] == b'S' {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        started = true;
                        pending.drain(..whole);
                    }
                }
            });
        }
    });
    let user = target.get_user().unwrap_or("postgres");
    let password = target
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let dbname = target.get_dbname().unwrap_or("postgres");
    let url = format!("postgres://{user}{password}@127.0.0.1:{proxied}/{dbname}?sslmode=disable");
    (url, syncs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_a_thousand_jobs_is_enqueued_in_one_round_trip() {
    let (url, syncs) = counting_proxy().await;
    let schema = common::schema().await;
    let options = PostgresOptions {
        schema,
        pool_size: 1, // One connection: its statements are prepared once.
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&url, options).await.unwrap();
    // The first enqueue prepares the statement on the connection.
    store
        .enqueue(vec![NewJob::new("warm", serde_json::json!(null))])
        .await
        .unwrap();
    let before = syncs.load(Ordering::SeqCst);
    let batch = (0..1000)
        .map(|n| NewJob::new("t", serde_json::json!({ "n": n })))
        .collect();
    let enqueued = store.enqueue(batch).await.unwrap();
    assert_eq!(enqueued.len(), 1000);
    assert_eq!(syncs.load(Ordering::SeqCst) - before, 1, "round trips");
    // The counter sees round trips at all: a second batch is one more.
    store
        .enqueue(vec![NewJob::new("t", serde_json::json!(null))])
        .await
        .unwrap();
    assert_eq!(syncs.load(Ordering::SeqCst) - before, 2);
    store.drop_schema().await.unwrap();
}
