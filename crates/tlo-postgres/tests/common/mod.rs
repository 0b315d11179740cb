//! Test databases: every test gets its own schema on the server named by
//! `TLO_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`). Schemas of test
//! processes that are gone are dropped on the next run.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};

use tlo_postgres::{PostgresOptions, PostgresStore};
use tokio::sync::OnceCell;

pub fn url() -> String {
    std::env::var("TLO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drops `tlo_test_<pid>_<n>` schemas whose process no longer exists.
async fn sweep() {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be reachable for these tests (TLO_TEST_DATABASE_URL)");
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tlo_test_%'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await;
        }
    }
}

/// A fresh schema name for one test.
pub async fn schema() -> String {
    static SWEPT: OnceCell<()> = OnceCell::const_new();
    SWEPT.get_or_init(sweep).await;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "tlo_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A migrated store in a fresh schema.
pub async fn store() -> PostgresStore {
    let options = PostgresOptions {
        schema: schema().await,
        pool_size: 4,
        ..PostgresOptions::default()
    };
    PostgresStore::connect_with(&url(), options)
        .await
        .expect("connect to PostgreSQL")
}
