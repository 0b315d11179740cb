//! Job rows: the indexed columns beside the whole job as JSON, read, written and claimed on the
//! connection thread.

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use tlo_core::claimed::Prepared;
use tlo_core::transition::{apply_claim, claim_order};
use tlo_core::{ClaimRequest, DateTime, Error, Job, JobId, Result, Utc};

use crate::conn::store_error;

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn json_error(err: serde_json::Error) -> Error {
    Error::Serialization(err)
}

pub(crate) fn decode(data: &str) -> Result<Job> {
    serde_json::from_str(data).map_err(json_error)
}

pub(crate) fn id_of(bytes: Vec<u8>) -> Result<JobId> {
    uuid::Uuid::from_slice(&bytes)
        .map(JobId)
        .map_err(store_error)
}

pub(crate) fn load(conn: &Connection, id: JobId) -> Result<Option<Job>> {
    conn.prepare_cached("SELECT data FROM jobs WHERE id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([id.0.as_bytes()], |row| row.get::<_, String>(0))
                .optional()
        })
        .map_err(store_error)?
        .map(|data| decode(&data))
        .transpose()
}

pub(crate) fn require(conn: &Connection, id: JobId) -> Result<Job> {
    load(conn, id)?.ok_or(Error::JobNotFound(id))
}

pub(crate) fn save(conn: &Connection, job: &Job) -> Result<()> {
    let data = serde_json::to_string(job).map_err(json_error)?;
    write(conn, job, &data)
}

/// Writes `job`, encoded as `data`.
fn write(conn: &Connection, job: &Job, data: &str) -> Result<()> {
    write_where(conn, job, data, None).map(drop)
}

/// Writes a completion prepared off the connection thread, if the stored job is still the one
/// its claim wrote; `false` (and nothing written) when something else wrote it since.
pub(crate) fn save_prepared(conn: &Connection, prepared: &Prepared) -> Result<bool> {
    let written = Some(prepared.written.as_str());
    write_where(conn, &prepared.job, &prepared.encoded, written).map(|rows| rows == 1)
}

/// Writes `job` as `data`, where the stored document is `written` if given; returns the rows
/// written.
fn write_where(conn: &Connection, job: &Job, data: &str, written: Option<&str>) -> Result<usize> {
    // Queue and priority never change after insert: leaving them out spares index writes.
    let sql = match written {
        None => {
            "UPDATE jobs SET state = ?2, eta = ?3, worker = ?4, lease_until = ?5, data = ?6,
                 finished_at = ?7 WHERE id = ?1"
        }
        Some(_) => {
            "UPDATE jobs SET state = ?2, eta = ?3, worker = ?4, lease_until = ?5, data = ?6,
                 finished_at = ?7 WHERE id = ?1 AND data = ?8"
        }
    };
    let mut stmt = conn.prepare_cached(sql).map_err(store_error)?;
    let columns = params![
        job.id.0.as_bytes(),
        job.state.as_str(),
        micros(job.eta),
        job.worker,
        job.lease_until.map(micros),
        data,
        job.finished_at.map(micros),
    ];
    match written {
        None => stmt.execute(columns),
        Some(written) => {
            let mut all = columns.to_vec();
            all.push(&written);
            stmt.execute(all.as_slice())
        }
    }
    .map_err(store_error)
}

pub(crate) fn insert(conn: &Connection, job: &Job) -> Result<()> {
    let data = serde_json::to_string(job).map_err(json_error)?;
    conn.prepare_cached(
        "INSERT INTO jobs (id, task, queue, state, priority, eta, unique_key, parent, root,
             depth, ord, worker, lease_until, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, NULL, ?12)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            job.id.0.as_bytes(),
            job.task,
            job.queue,
            job.state.as_str(),
            job.priority,
            micros(job.eta),
            job.unique_key,
            job.parent.map(|p| p.0.as_bytes().to_vec()),
            job.root.0.as_bytes(),
            job.depth,
            job.order,
            data,
        ])
    })
    .map_err(store_error)?;
    Ok(())
}

/// `(?, ?, ...)` for `n` parameters.
pub(crate) fn placeholders(n: usize) -> String {
    let mut text = String::from("(");
    for i in 0..n {
        if i > 0 {
            text.push_str(", ");
        }
        text.push('?');
    }
    text.push(')');
    text
}

/// Loads every job matching `sql` (a query of `data`) with `args`.
pub(crate) fn load_many(
    conn: &Connection,
    sql: &str,
    args: impl IntoIterator<Item = rusqlite::types::Value>,
) -> Result<Vec<Job>> {
    let mut stmt = conn.prepare_cached(sql).map_err(store_error)?;
    let rows = stmt
        .query_map(params_from_iter(args), |row| row.get::<_, String>(0))
        .map_err(store_error)?;
    rows.map(|row| decode(&row.map_err(store_error)?)).collect()
}

pub(crate) fn text_values(items: &[String]) -> impl Iterator<Item = rusqlite::types::Value> + '_ {
    items
        .iter()
        .map(|item| rusqlite::types::Value::Text(item.clone()))
}

/// The highest priority below `below` (any, when `None`) among the scheduled jobs of `queue`.
pub(crate) fn next_priority(
    conn: &Connection,
    queue: &str,
    below: Option<i64>,
) -> Result<Option<i64>> {
    // `+?n` and literal LIMITs keep SQLite from re-preparing these statements on every call
    // (a plan that depends on a bound value is re-prepared when the value changes).
    let found = match below {
        None => conn
            .prepare_cached(
                "SELECT priority FROM jobs INDEXED BY jobs_due
                 WHERE state = 'scheduled' AND queue = +?1 ORDER BY priority DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![queue], |r| r.get(0)).optional()),
        Some(below) => conn
            .prepare_cached(
                "SELECT priority FROM jobs INDEXED BY jobs_due
                 WHERE state = 'scheduled' AND queue = +?1 AND priority < +?2
                 ORDER BY priority DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![queue, below], |r| r.get(0)).optional()),
    };
    found.map_err(store_error)
}

/// Claims due jobs for `request` on the connection thread.
///
/// Each queue is read one priority at a time, every read a range of the `jobs_due` index that
/// ends at the first job not yet due: jobs waiting for a later eta (delayed jobs, workflow nodes
/// waiting for their dependencies) are never stepped over, however many there are.
///
/// Returns each claimed job with the document written for it.
pub(crate) fn claim_in(conn: &Connection, request: &ClaimRequest) -> Result<Vec<(Job, String)>> {
    let now = micros(request.now);
    let mut candidates: Vec<(i64, Job)> = Vec::new();
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, data FROM jobs INDEXED BY jobs_due
             WHERE state = 'scheduled' AND queue = +?1 AND priority = +?2 AND eta <= +?3
             ORDER BY eta, seq",
        )
        .map_err(store_error)?;
    for demand in request.queues.iter().filter(|d| d.limit > 0) {
        let mut wanted = demand.limit.min(request.limit);
        let mut priority = next_priority(conn, &demand.queue, None)?;
        while let Some(level) = priority {
            let rows = stmt
                .query_map(params![demand.queue, level, now], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(store_error)?;
            // Stepping stops after `wanted` rows, in index order.
            for row in rows.take(wanted) {
                let (seq, data) = row.map_err(store_error)?;
                candidates.push((seq, decode(&data)?));
                wanted -= 1;
            }
            if wanted == 0 {
                break;
            }
            priority = next_priority(conn, &demand.queue, Some(level))?;
        }
    }
    candidates.sort_by(|(sa, a), (sb, b)| claim_order(a, *sa, b, *sb));
    candidates.truncate(request.limit);
    let mut claimed = Vec::with_capacity(candidates.len());
    for (_, mut job) in candidates {
        apply_claim(&mut job, &request.worker, request.now, request.lease)?;
        let data = serde_json::to_string(&job).map_err(json_error)?;
        write(conn, &job, &data)?;
        claimed.push((job, data));
    }
    Ok(claimed)
}
