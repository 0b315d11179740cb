//! Embedded, versioned migrations, applied under an advisory lock: concurrent migrators are
//! safe, applied versions are never re-run, and no data is ever dropped (a migration may drop
//! or replace an index or a constraint, never a table, a column or a row).

use tlo_core::Result;

use crate::pool::{db_error, pg_error};

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
    (
        3,
        // Fewer index writes per state write (each one is a non-HOT update, which writes an
        // entry into every index covering the row): the job id becomes the primary key (the
        // submission order `seq` is read only through `jobs_due`), and unique keys are indexed
        // only where there is one.
        r#"
    ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_pkey;
    ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_id_key;
    ALTER TABLE {schema}.jobs ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);
    CREATE UNIQUE INDEX jobs_unique_key ON {schema}.jobs (unique_key)
        WHERE unique_key IS NOT NULL;
    ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_unique_key_key;
    "#,
    ),
    (
        4,
        // A claim is one statement that writes columns only: `claimed_at` set means the
        // document predates the claim made then, by the `worker` column until `lease_until`
        // (readers apply the claim to it); the next write of the whole document clears it.
        r#"
    ALTER TABLE {schema}.jobs ADD COLUMN claimed_at BIGINT;
    "#,
    ),
    (
        5,
        // Fewer and cheaper writes per job (measured with `pg_waldump --stats` over a 20,000-job
        // drain). Room left on each page for the new versions of its rows: a claim and an
        // outcome are then written beside the old version, not on another page (which costs an
        // extra WAL record, a free-space search and a page more to keep in cache). And one
        // index less: every version of every row wrote an entry into `(task, state)`, which
        // only listings filtered by task read (they scan the table instead, as Oban's do).
        r#"
    ALTER TABLE {schema}.jobs SET (fillfactor = 50);
    DROP INDEX IF EXISTS {schema}.jobs_task_state;
    "#,
    ),
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies the migrations not yet applied to `schema`; returns the versions applied.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<Vec<i64>> {
    migrate_to(client, schema, SCHEMA_VERSION).await
}

/// Checks, without migrating, that `schema` is at the version this build knows: a store used
/// with migrations off must have been migrated (`tlo migrate`) by this very version.
pub(crate) async fn check_version(client: &tokio_postgres::Client, schema: &str) -> Result<()> {
    let current = match current_version(client, schema).await {
        Ok(current) => current,
        // No migrations table: never migrated.
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
        Err(err) => return Err(db_error(err)),
    };
    match current.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(pg_error(format!(
            "schema {schema} is at version {current}, this build of tlo needs {SCHEMA_VERSION}; \
             run `tlo migrate` (or connect with migrations on)"
        ))),
        std::cmp::Ordering::Greater => Err(newer_than_this_build(schema, current)),
    }
}

/// The newest migration applied to `schema` (0 for none).
async fn current_version(
    db: &impl tokio_postgres::GenericClient,
    schema: &str,
) -> Result<i64, tokio_postgres::Error> {
    let sql = format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.tlo_migrations");
    Ok(db.query_one(&sql, &[]).await?.get(0))
}

/// `schema` is at `current`, a version this build does not know.
fn newer_than_this_build(schema: &str, current: i64) -> tlo_core::Error {
    pg_error(format!(
        "schema {schema} is at version {current}, newer than this build of tlo \
         ({SCHEMA_VERSION}); upgrade tlo"
    ))
}

/// Applies the migrations not yet applied to `schema` up to version `target`.
async fn migrate_to(
    client: &mut tokio_postgres::Client,
    schema: &str,
    target: i64,
) -> Result<Vec<i64>> {
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tlo-migrate:' || $1))",
        &[&schema],
    )
    .await
    .map_err(db_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.tlo_migrations (
             version BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(db_error)?;
    let current = current_version(&tx, schema).await.map_err(db_error)?;
    if current > SCHEMA_VERSION {
        return Err(newer_than_this_build(schema, current));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS
        .iter()
        .filter(|(v, _)| *v > current && *v <= target)
    {
        tx.batch_execute(&sql.replace("{schema}", schema))
            .await
            .map_err(|err| match err.as_db_error() {
                Some(db) => pg_error(format!("migration {version}: {}", db.message())),
                None => pg_error(format!("migration {version}: {err}")),
            })?;
        tx.execute(
            &format!("INSERT INTO {schema}.tlo_migrations (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(db_error)?;
        applied.push(*version);
    }
    tx.commit().await.map_err(db_error)?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PostgresOptions, PostgresStore};
    use tlo_core::{NewJob, Store, Utc};

    fn url() -> String {
        std::env::var("TLO_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    async fn connect() -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be reachable (TLO_TEST_DATABASE_URL)");
        tokio::spawn(connection);
        client
    }

    /// A connection and the name of an empty schema of this test's own (`name`).
    async fn fresh_schema(name: &str) -> (tokio_postgres::Client, String) {
        let client = connect().await;
        let schema = format!("tlo_test_{}_{name}", std::process::id());
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .unwrap();
        (client, schema)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_statement_reports_what_the_server_said() {
        let client = connect().await;
        let err = client
            .execute("SELECT * FROM tlo_no_such_table", &[])
            .await
            .map_err(db_error)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "store: postgres: relation \"tlo_no_such_table\" does not exist (42P01)"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_migrations_a_schema_of_another_version_is_refused_by_name() {
        let (mut client, schema) = fresh_schema("versions").await;
        let unmigrated = PostgresOptions {
            schema: schema.clone(),
            migrate: false,
            pool_size: 1,
            ..PostgresOptions::default()
        };
        let url = url();
        let connect = || PostgresStore::connect_with(&url, unmigrated.clone());
        let never = connect().await.unwrap_err().to_string();
        assert!(
            never.contains("is at version 0") && never.contains("tlo migrate"),
            "{never}"
        );
        migrate_to(&mut client, &schema, SCHEMA_VERSION - 1)
            .await
            .unwrap();
        let older = connect().await.unwrap_err().to_string();
        let expected = format!("is at version {}", SCHEMA_VERSION - 1);
        assert!(older.contains(&expected), "{older}");
        migrate_to(&mut client, &schema, SCHEMA_VERSION)
            .await
            .unwrap();
        connect().await.expect("the version this build knows");
        client
            .batch_execute(&format!(
                "INSERT INTO {schema}.tlo_migrations (version) VALUES (999)"
            ))
            .await
            .unwrap();
        let newer = connect().await.unwrap_err().to_string();
        assert!(newer.contains("newer than this build"), "{newer}");
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upgrading_from_the_first_version_keeps_every_job_and_its_unique_key() {
        let (mut client, schema) = fresh_schema("upgrade").await;
        assert_eq!(migrate_to(&mut client, &schema, 1).await.unwrap(), [1]);
        // A job written by a build at version 1.
        let mut new = NewJob::new("report", serde_json::json!({"day": 1}));
        new.unique_key = Some("report:day-1".into());
        let job = new.into_job(Utc::now());
        client
            .execute(
                &format!(
                    "INSERT INTO {schema}.jobs (id, task, queue, state, priority, eta, unique_key,
                         root, depth, ord, data)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9)"
                ),
                &[
                    &job.id.0,
                    &job.task,
                    &job.queue,
                    &job.state.as_str(),
                    &job.priority,
                    &job.eta.timestamp_micros(),
                    &job.unique_key,
                    &job.root.0,
                    &tokio_postgres::types::Json(&job),
                ],
            )
            .await
            .unwrap();

        let options = PostgresOptions {
            schema: schema.clone(),
            pool_size: 2,
            ..PostgresOptions::default()
        };
        let store = PostgresStore::connect_with(&url(), options).await.unwrap();
        assert!(
            store.migrate().await.unwrap().is_empty(),
            "upgraded on connect"
        );
        let kept = store.get(job.id).await.unwrap().expect("the job survives");
        assert_eq!(kept.args, job.args);
        let mut again = NewJob::new("report", serde_json::json!({"day": 1}));
        again.unique_key = Some("report:day-1".into());
        let enqueued = store.enqueue(vec![again]).await.unwrap();
        assert_eq!(
            (enqueued[0].id, enqueued[0].inserted),
            (job.id, false),
            "its unique key still holds"
        );
        store.drop_schema().await.unwrap();
    }
}
