//! `PostgresLocker`: exclusivity keys as rows with a lease, held across processes and hosts,
//! never by a transaction kept open for the job.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tlo_core::{JobId, Locker, Result, Utc, async_trait};
use uuid::Uuid;

use crate::pool::db_error;
use crate::store::client;

/// A [`Locker`] on the `locks` table; a holder that vanished loses its key when its lease ends.
#[derive(Clone, Debug)]
pub struct PostgresLocker {
    pool: Pool,
    sql: Arc<LockSql>,
    url: Arc<str>,
}

/// The locker's statements, rendered once for the schema and prepared once per connection
/// (each job with an exclusivity key takes, renews and releases its lock).
#[derive(Debug)]
struct LockSql {
    acquire: String,
    renew: String,
    release: String,
    holder: String,
}

impl PostgresLocker {
    pub(crate) fn new(pool: Pool, schema: Arc<str>, url: Arc<str>) -> Self {
        let t = format!("{schema}.locks");
        let sql = LockSql {
            acquire: format!(
                "INSERT INTO {t} (key, owner, expires) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET owner = excluded.owner,
                     expires = excluded.expires
                 WHERE {t}.expires < $4 OR {t}.owner = excluded.owner"
            ),
            renew: format!("UPDATE {t} SET expires = $3 WHERE key = $1 AND owner = $2"),
            release: format!("DELETE FROM {t} WHERE key = $1 AND owner = $2"),
            holder: format!("SELECT owner FROM {t} WHERE key = $1 AND expires > $2"),
        };
        PostgresLocker {
            pool,
            sql: Arc::new(sql),
            url,
        }
    }
}

fn now() -> i64 {
    Utc::now().timestamp_micros()
}

fn until(ttl: Duration) -> i64 {
    now() + i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 2)
}

#[async_trait]
impl Locker for PostgresLocker {
    async fn try_acquire(&self, key: &str, owner: JobId, ttl: Duration) -> Result<bool> {
        let client = client(&self.pool, &self.url).await?;
        let statement = prepared(&client, &self.sql.acquire).await?;
        let changed = client
            .execute(&statement, &[&key, &owner.0, &until(ttl), &now()])
            .await
            .map_err(db_error)?;
        Ok(changed > 0)
    }

    async fn renew(&self, key: &str, owner: JobId, ttl: Duration) -> Result<bool> {
        let client = client(&self.pool, &self.url).await?;
        let statement = prepared(&client, &self.sql.renew).await?;
        let changed = client
            .execute(&statement, &[&key, &owner.0, &until(ttl)])
            .await
            .map_err(db_error)?;
        Ok(changed > 0)
    }

    async fn release(&self, key: &str, owner: JobId) -> Result<()> {
        let client = client(&self.pool, &self.url).await?;
        let statement = prepared(&client, &self.sql.release).await?;
        client
            .execute(&statement, &[&key, &owner.0])
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn holder(&self, key: &str) -> Result<Option<JobId>> {
        let client = client(&self.pool, &self.url).await?;
        let statement = prepared(&client, &self.sql.holder).await?;
        let row = client
            .query_opt(&statement, &[&key, &now()])
            .await
            .map_err(db_error)?;
        Ok(row.map(|r| JobId(r.get::<_, Uuid>(0))))
    }
}

/// `sql` prepared once per connection (parsing and planning it on every call cost a round
/// trip more).
async fn prepared(
    client: &deadpool_postgres::Object,
    sql: &str,
) -> Result<tokio_postgres::Statement> {
    client.prepare_cached(sql).await.map_err(db_error)
}
