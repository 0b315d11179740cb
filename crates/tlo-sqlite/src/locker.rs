//! `SqliteLocker`: exclusivity keys as rows with a lease, shared by every process on the file.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use tlo_core::{JobId, Locker, Result, Utc, async_trait};

use crate::conn::{Conn, store_error};

/// A [`Locker`] on the `locks` table of an SQLite store: keys hold across processes; a holder
/// that vanished loses its key when its lease runs out.
#[derive(Debug, Clone)]
pub struct SqliteLocker {
    conn: Conn,
}

impl SqliteLocker {
    pub(crate) fn new(conn: Conn) -> Self {
        SqliteLocker { conn }
    }
}

fn until(ttl: Duration) -> i64 {
    Utc::now().timestamp_micros() + i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 2)
}

#[async_trait]
impl Locker for SqliteLocker {
    async fn try_acquire(&self, key: &str, owner: JobId, ttl: Duration) -> Result<bool> {
        let key = key.to_owned();
        self.conn
            .call(move |conn| {
                let now = Utc::now().timestamp_micros();
                let changed = conn
                    .prepare_cached(
                        "INSERT INTO locks (key, owner, expires) VALUES (?1, ?2, ?3)
                         ON CONFLICT (key) DO UPDATE SET owner = excluded.owner,
                             expires = excluded.expires
                         WHERE locks.expires < ?4 OR locks.owner = excluded.owner",
                    )
                    .and_then(|mut s| s.execute(params![key, owner.0.as_bytes(), until(ttl), now]))
                    .map_err(store_error)?;
                Ok(changed > 0)
            })
            .await
    }

    async fn renew(&self, key: &str, owner: JobId, ttl: Duration) -> Result<bool> {
        let key = key.to_owned();
        self.conn
            .call(move |conn| {
                let changed = conn
                    .prepare_cached("UPDATE locks SET expires = ?3 WHERE key = ?1 AND owner = ?2")
                    .and_then(|mut s| s.execute(params![key, owner.0.as_bytes(), until(ttl)]))
                    .map_err(store_error)?;
                Ok(changed > 0)
            })
            .await
    }

    async fn release(&self, key: &str, owner: JobId) -> Result<()> {
        let key = key.to_owned();
        self.conn
            .call(move |conn| {
                conn.prepare_cached("DELETE FROM locks WHERE key = ?1 AND owner = ?2")
                    .and_then(|mut s| s.execute(params![key, owner.0.as_bytes()]))
                    .map_err(store_error)?;
                Ok(())
            })
            .await
    }

    async fn holder(&self, key: &str) -> Result<Option<JobId>> {
        let key = key.to_owned();
        self.conn
            .call(move |conn| {
                let now = Utc::now().timestamp_micros();
                let owner: Option<Vec<u8>> = conn
                    .prepare_cached("SELECT owner FROM locks WHERE key = ?1 AND expires > ?2")
                    .and_then(|mut s| s.query_row(params![key, now], |r| r.get(0)).optional())
                    .map_err(store_error)?;
                owner
                    .map(|bytes| {
                        uuid::Uuid::from_slice(&bytes)
                            .map(JobId)
                            .map_err(store_error)
                    })
                    .transpose()
            })
            .await
    }
}
