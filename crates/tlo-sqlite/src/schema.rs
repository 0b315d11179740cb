//! Embedded, versioned migrations: applied in order, each once, never destructive.

use rusqlite::Connection;
use tlo_core::Result;

use crate::conn::store_error;

/// Migrations in order; a released one is never edited, only followed by a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,
        id BLOB NOT NULL UNIQUE,
        task TEXT NOT NULL,
        queue TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        eta INTEGER NOT NULL,
        unique_key TEXT UNIQUE,
        parent BLOB,
        root BLOB NOT NULL,
        depth INTEGER NOT NULL,
        ord INTEGER NOT NULL,
        worker TEXT,
        lease_until INTEGER,
        finished_at INTEGER,
        data TEXT NOT NULL
    );
    CREATE INDEX jobs_due ON jobs (queue, priority DESC, eta, seq) WHERE state = 'scheduled';
    CREATE INDEX jobs_executing ON jobs (lease_until)
        WHERE state IN ('running', 'cancel_requested', 'cancelling');
    CREATE INDEX jobs_task_state ON jobs (task, state);
    CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX jobs_root ON jobs (root);
    CREATE INDEX jobs_parent ON jobs (parent);
    CREATE TABLE job_logs (
        seq INTEGER PRIMARY KEY,
        job BLOB NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX job_logs_job ON job_logs (job, seq);
    CREATE TABLE schedule_slots (
        name TEXT PRIMARY KEY,
        slot INTEGER NOT NULL
    );
    CREATE TABLE locks (
        key TEXT PRIMARY KEY,
        owner BLOB NOT NULL,
        expires INTEGER NOT NULL
    );
    "#,
    ),
    (
        2,
        // `state` changes on every transition; an index holding it is rewritten each time. The
        // task alone never changes, so SQLite leaves this index alone on updates.
        r#"
    DROP INDEX jobs_task_state;
    CREATE INDEX jobs_task ON jobs (task);
    "#,
    ),
    (
        3,
        // No change to the tables: job documents are written without their empty fields from
        // this version on, which older builds cannot read; this version makes them refuse the
        // file by name instead.
        "-- job documents without empty fields",
    ),
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies the migrations not yet applied; safe to run from several processes at once.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(store_error)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS tlo_migrations (
             version INTEGER PRIMARY KEY,
             applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
         )",
    )
    .map_err(store_error)?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM tlo_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(store_error)?;
    if current > SCHEMA_VERSION {
        return Err(store_error(format!(
            "the database is at schema version {current}, newer than this build of tlo ({SCHEMA_VERSION}); upgrade tlo"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)
            .map_err(|err| store_error(format!("migration {version}: {err}")))?;
        tx.execute(
            "INSERT INTO tlo_migrations (version) VALUES (?1)",
            [version],
        )
        .map_err(store_error)?;
    }
    tx.commit().map_err(store_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_at_a_newer_schema_version_is_refused_by_name() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO tlo_migrations (version) VALUES (?1)",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        let newer = format!("schema version {}", SCHEMA_VERSION + 1);
        assert!(err.contains(&newer), "{err}");
        assert!(err.contains(&format!("({SCHEMA_VERSION})")), "{err}");
    }

    #[test]
    fn migrations_run_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let applied: i64 = conn
            .query_row("SELECT COUNT(*) FROM tlo_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(applied, MIGRATIONS.len() as i64);
    }
}
