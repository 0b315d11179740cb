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
    table: String,
    url: Arc<str>,
}

impl PostgresLocker {
    pub(crate) fn new(pool: Pool, schema: Arc<str>, url: Arc<str>) -> Self {
        PostgresLocker {
            pool,
            table: format!("{schema}.locks"),
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
        let statement = prepared(
            &client,
            &format!(
                "INSERT INTO {t} (key, owner, expires) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET owner = excluded.owner,
                         expires = excluded.expires
                     WHERE {t}.expires < $4 OR {t}.owner = excluded.owner",
                t = self.table
            ),
        )
        .await?;
        let changed = client
            .execute(&statement, &[&key, &owner.0, &until(ttl), &now()])
            .await
            .map_err(db_error)?;
        Ok(changed > 0)
    }

    async fn renew(&self, key: &str, owner: JobId, ttl: Duration) -> Result<bool> {
        let client = client(&self.pool, &self.url).await?;
        let sql = format!(
            "UPDATE {} SET expires = $3 WHERE key = $1 AND owner = $2",
            self.table
        );
        let statement = prepared(&client, &sql).await?;
        let changed = client
            .execute(&statement, &[&key, &owner.0, &until(ttl)])
            .await
            .map_err(db_error)?;
        Ok(changed > 0)
    }

    async fn release(&self, key: &str, owner: JobId) -> Result<()> {
        let client = client(&self.pool, &self.url).await?;
        let sql = format!("DELETE FROM {} WHERE key = $1 AND owner = $2", self.table);
        let statement = prepared(&client, &sql).await?;
        client
            .execute(&statement, &[&key, &owner.0])
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn holder(&self, key: &str) -> Result<Option<JobId>> {
        let client = client(&self.pool, &self.url).await?;
        let sql = format!(
            "SELECT owner FROM {} WHERE key = $1 AND expires > $2",
            self.table
        );
        let statement = prepared(&client, &sql).await?;
        let row = client
            .query_opt(&statement, &[&key, &now()])
            .await
            .map_err(db_error)?;
        Ok(row.map(|r| JobId(r.get::<_, Uuid>(0))))
    }
}

/// `sql` prepared once per connection (each job with an exclusivity key takes, renews and
/// releases its lock: parsing and planning each statement every time cost a round trip more).
async fn prepared(
    client: &deadpool_postgres::Object,
    sql: &str,
) -> Result<tokio_postgres::Statement> {
    client.prepare_cached(sql).await.map_err(db_error)
}
