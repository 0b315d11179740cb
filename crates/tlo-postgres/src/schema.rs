//! Embedded, versioned migrations, applied under an advisory lock: concurrent migrators are
//! safe, applied versions are never re-run, nothing is ever dropped.

use tlo_core::Result;

use crate::pool::pg_error;

/// Migrations in order; `{schema}` is replaced by the store's schema name. A released migration
/// is never edited, only followed by a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE {schema}.jobs (
        seq BIGSERIAL PRIMARY KEY,
        id UUID NOT NULL UNIQUE,
        task TEXT NOT NULL,
        queue TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        eta BIGINT NOT NULL,
        unique_key TEXT UNIQUE,
        parent UUID,
        root UUID NOT NULL,
        depth INTEGER NOT NULL,
        ord INTEGER NOT NULL,
        worker TEXT,
        lease_until BIGINT,
        finished_at BIGINT,
        data JSONB NOT NULL
    );
    CREATE INDEX jobs_due ON {schema}.jobs (queue, priority DESC, eta, seq)
        WHERE state = 'scheduled';
    CREATE INDEX jobs_executing ON {schema}.jobs (lease_until)
        WHERE state IN ('running', 'cancel_requested', 'cancelling');
    CREATE INDEX jobs_task_state ON {schema}.jobs (task, state);
    CREATE INDEX jobs_finished ON {schema}.jobs (state, finished_at)
        WHERE finished_at IS NOT NULL;
    CREATE INDEX jobs_root ON {schema}.jobs (root);
    CREATE INDEX jobs_parent ON {schema}.jobs (parent);
    CREATE TABLE {schema}.job_logs (
        seq BIGSERIAL PRIMARY KEY,
        job UUID NOT NULL,
        data JSONB NOT NULL
    );
    CREATE INDEX job_logs_job ON {schema}.job_logs (job, seq);
    CREATE TABLE {schema}.schedule_slots (
        name TEXT PRIMARY KEY,
        slot BIGINT NOT NULL
    );
    CREATE TABLE {schema}.locks (
        key TEXT PRIMARY KEY,
        owner UUID NOT NULL,
        expires BIGINT NOT NULL
    );
    "#,
    ),
    (
        2,
        // Cheaper writes on the hot path: the job document as `json` (stored as sent, not
        // re-parsed into `jsonb` on every state write), and tree indexes over child jobs only,
        // since every non-HOT update also writes an entry into each index covering the row.
        r#"
    ALTER TABLE {schema}.jobs ALTER COLUMN data TYPE JSON USING data::json;
    DROP INDEX {schema}.jobs_root;
    DROP INDEX {schema}.jobs_parent;
    CREATE INDEX jobs_children_root ON {schema}.jobs (root) WHERE parent IS NOT NULL;
    CREATE INDEX jobs_children ON {schema}.jobs (parent) WHERE parent IS NOT NULL;
    "#,
    ),
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies the migrations not yet applied to `schema`; returns the versions applied.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<Vec<i64>> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tlo-migrate:' || $1))",
        &[&schema],
    )
    .await
    .map_err(pg_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.tlo_migrations (
             version BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(pg_error)?;
    let current: i64 = tx
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.tlo_migrations"),
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(pg_error(format!(
            "schema {schema} is at version {current}, newer than this build of tlo ({SCHEMA_VERSION}); upgrade tlo"
        )));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(&sql.replace("{schema}", schema))
            .await
            .map_err(|err| pg_error(format!("migration {version}: {err}")))?;
        tx.execute(
            &format!("INSERT INTO {schema}.tlo_migrations (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(pg_error)?;
        applied.push(*version);
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(applied)
}
