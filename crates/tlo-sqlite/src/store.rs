//! `SqliteStore`: jobs in one SQLite file.
//!
//! Indexed columns (state, queue, priority, eta, ...) sit beside the whole job as JSON, and every
//! state write loads the job, applies the reference semantics of `tlo_core::transition`, and
//! writes it back inside the batch transaction, so SQLite behaves exactly as the other stores.
//! Completions of this process's own claims take a shorter way to the same result: applied on
//! the caller's thread to the document the claim wrote (`tlo_core::claimed`), and written only
//! where the row still holds that document.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use tlo_core::claimed::{ClaimedDocs, Prepared};
use tlo_core::transition::{
    Change, apply_acknowledge_cancel, apply_cancel_request, apply_change, apply_completion,
    apply_progress, apply_relaunch, apply_rescue, check_prunable,
};
use tlo_core::{
    CancelOutcome, ClaimRequest, Completion, DateTime, Enqueued, Error, Job, JobFilter, JobId,
    JobState, LogEntry, NewJob, Progress, Result, Store, Utc, async_trait,
};

use crate::conn::{Conn, store_error};
use crate::rows::{
    claim_in, id_of, insert, json_error, load, load_many, micros, next_priority, placeholders,
    require, save, save_prepared, text_values,
};
use crate::schema;

/// A store in an SQLite file: durable, zero set-up, safe with several processes on one file
/// (they take turns writing).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tlo_core::{NewJob, Store};
/// let dir = std::env::temp_dir().join(format!("tlo-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = tlo_sqlite::SqliteStore::open(dir.join("tlo.db"))?;
/// let ids = store.enqueue(vec![NewJob::new("greet", serde_json::json!({"name": "Ada"}))]).await?;
/// assert!(store.get(ids[0].id).await?.is_some());
/// # Ok::<(), tlo_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Conn,
    path: PathBuf,
    /// This process's claims, so that completions are prepared off the connection thread.
    claimed: Arc<ClaimedDocs>,
}

/// Applies `change` to job `id` and writes it back (nothing, when refused).
fn change_in(conn: &Connection, id: JobId, change: &Change, now: DateTime<Utc>) -> Result<Job> {
    let mut job = require(conn, id)?;
    apply_change(&mut job, change, now)?;
    save(conn, &job)?;
    Ok(job)
}

/// Records `completion`, prepared off the connection thread when this process claimed the job
/// and nothing else wrote it since; else on the stored job.
fn complete_prepared(
    conn: &Connection,
    completion: &Completion,
    prepared: Option<Prepared>,
) -> Result<Job> {
    if let Some(prepared) = prepared {
        if save_prepared(conn, &prepared)? {
            return Ok(prepared.job);
        }
    }
    complete_in(conn, completion)
}

/// Records `completion` (nothing, when refused).
fn complete_in(conn: &Connection, completion: &Completion) -> Result<Job> {
    let mut job = require(conn, completion.id)?;
    apply_completion(&mut job, completion)?;
    save(conn, &job)?;
    Ok(job)
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` and applies pending migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|err| store_error(format!("cannot create {}: {err}", dir.display())))?;
        }
        let conn = Conn::open(&path, schema::migrate)?;
        Ok(SqliteStore {
            conn,
            path,
            claimed: Arc::default(),
        })
    }

    /// Opens the store named by a URL: `sqlite://relative/or/absolute.db`, `sqlite:file.db`,
    /// or a plain path. A URL of another scheme (`postgres://...`) is `Error::InvalidSetting`.
    pub fn open_url(url: &str) -> Result<SqliteStore> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        // Another scheme (`postgres://...` with the store left at SQLite) is a mistake, not a
        // relative path to create.
        if let Some((scheme, _)) = path.split_once("://") {
            return Err(Error::InvalidSetting {
                name: "TLO_DATABASE_URL".into(),
                value: format!("{scheme}://..."),
                expected: "a SQLite file (path, sqlite:path); for PostgreSQL set \
                           TLO_TASK_STATE_STORE=postgres"
                    .into(),
            });
        }
        Self::open(path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A [`SqliteLocker`](crate::SqliteLocker) on the same file and connection.
    pub fn locker(&self) -> crate::SqliteLocker {
        crate::SqliteLocker::new(self.conn.clone())
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn is_shared(&self) -> bool {
        // Other processes may open the same file.
        true
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.conn
            .call(move |conn| {
                let now = Utc::now();
                let mut out = Vec::with_capacity(jobs.len());
                for new in jobs {
                    if let Some(key) = &new.unique_key {
                        let existing: Option<Vec<u8>> = conn
                            .prepare_cached("SELECT id FROM jobs WHERE unique_key = ?1")
                            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                            .map_err(store_error)?;
                        if let Some(existing) = existing {
                            out.push(Enqueued {
                                id: id_of(existing)?,
                                inserted: false,
                            });
                            continue;
                        }
                    }
                    let job = new.into_job(now);
                    insert(conn, &job)?;
                    out.push(Enqueued {
                        id: job.id,
                        inserted: true,
                    });
                }
                Ok(out)
            })
            .await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Job>> {
        let request = request.clone();
        let claimed = self.conn.call(move |conn| claim_in(conn, &request)).await?;
        Ok(claimed
            .into_iter()
            .map(|(job, written)| {
                self.claimed.remember(&job, written);
                job
            })
            .collect())
    }

    async fn complete_many(&self, completions: Vec<Completion>) -> Result<Vec<Result<Job>>> {
        // Decoding, applying and encoding here, on the caller's thread, leaves the connection
        // thread (every process's one writer) only the conditional write.
        let prepared: Vec<_> = completions
            .into_iter()
            .map(|completion| {
                let prepared = self.claimed.prepare(&completion);
                (completion, prepared)
            })
            .collect();
        self.conn
            .call(move |conn| {
                Ok(prepared
                    .into_iter()
                    .map(|(completion, prepared)| complete_prepared(conn, &completion, prepared))
                    .collect())
            })
            .await
    }

    async fn complete(&self, completion: Completion) -> Result<Job> {
        let prepared = self.claimed.prepare(&completion);
        self.conn
            .call(move |conn| complete_prepared(conn, &completion, prepared))
            .await
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome> {
        self.conn
            .call(move |conn| {
                let mut job = require(conn, id)?;
                let outcome = apply_cancel_request(&mut job, Utc::now())?;
                save(conn, &job)?;
                Ok(outcome)
            })
            .await
    }

    async fn change(&self, id: JobId, change: Change) -> Result<Job> {
        self.conn
            .call(move |conn| change_in(conn, id, &change, Utc::now()))
            .await
    }

    async fn change_many(&self, changes: Vec<(JobId, Change)>) -> Result<Vec<Result<Job>>> {
        self.conn
            .call(move |conn| {
                let now = Utc::now();
                // A refused change writes nothing (it fails before `save`): the others apply.
                Ok(changes
                    .into_iter()
                    .map(|(id, change)| change_in(conn, id, &change, now))
                    .collect())
            })
            .await
    }

    async fn relaunch(&self, id: JobId, eta: DateTime<Utc>) -> Result<Job> {
        self.conn
            .call(move |conn| {
                let mut job = require(conn, id)?;
                apply_relaunch(&mut job, eta)?;
                save(conn, &job)?;
                Ok(job)
            })
            .await
    }

    async fn acknowledge_cancel(&self, id: JobId, attempt: u32) -> Result<()> {
        self.conn
            .call(move |conn| {
                let mut job = require(conn, id)?;
                apply_acknowledge_cancel(&mut job, attempt)?;
                save(conn, &job)
            })
            .await
    }

    async fn renew_leases(
        &self,
        worker: &str,
        jobs: &[(JobId, u32)],
        until: DateTime<Utc>,
    ) -> Result<Vec<(JobId, JobState)>> {
        let (worker, jobs) = (worker.to_owned(), jobs.to_vec());
        self.conn
            .call(move |conn| {
                let mut out = Vec::with_capacity(jobs.len());
                for (id, attempt) in jobs {
                    let Some(mut job) = load(conn, id)? else {
                        continue;
                    };
                    if job.attempt == attempt
                        && job.state.is_executing()
                        && job.worker.as_deref() == Some(worker.as_str())
                    {
                        job.lease_until = Some(until);
                        save(conn, &job)?;
                        out.push((id, job.state));
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn rescue_expired(&self, now: DateTime<Utc>) -> Result<Vec<Job>> {
        self.conn
            .call(move |conn| {
                let expired = load_many(
                    conn,
                    "SELECT data FROM jobs
                     WHERE state IN ('running', 'cancel_requested', 'cancelling')
                       AND lease_until < ?1",
                    [rusqlite::types::Value::Integer(micros(now))],
                )?;
                let mut rescued = Vec::with_capacity(expired.len());
                for mut job in expired {
                    apply_rescue(&mut job, now);
                    save(conn, &job)?;
                    rescued.push(job);
                }
                Ok(rescued)
            })
            .await
    }

    async fn set_progress(&self, id: JobId, attempt: u32, progress: Progress) -> Result<()> {
        self.conn
            .call(move |conn| {
                let mut job = require(conn, id)?;
                apply_progress(&mut job, attempt, progress)?;
                save(conn, &job)
            })
            .await
    }

    async fn append_logs(&self, id: JobId, entries: Vec<LogEntry>) -> Result<()> {
        self.conn
            .call(move |conn| {
                require(conn, id)?;
                let mut stmt = conn
                    .prepare_cached("INSERT INTO job_logs (job, data) VALUES (?1, ?2)")
                    .map_err(store_error)?;
                for entry in entries {
                    let data = serde_json::to_string(&entry).map_err(json_error)?;
                    stmt.execute(params![id.0.as_bytes(), data])
                        .map_err(store_error)?;
                }
                Ok(())
            })
            .await
    }

    async fn logs(&self, id: JobId) -> Result<Vec<LogEntry>> {
        self.conn
            .call(move |conn| {
                require(conn, id)?;
                let mut stmt = conn
                    .prepare_cached("SELECT data FROM job_logs WHERE job = ?1 ORDER BY seq")
                    .map_err(store_error)?;
                let rows = stmt
                    .query_map([id.0.as_bytes()], |row| row.get::<_, String>(0))
                    .map_err(store_error)?;
                rows.map(|row| serde_json::from_str(&row.map_err(store_error)?).map_err(json_error))
                    .collect()
            })
            .await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>> {
        self.conn.call(move |conn| load(conn, id)).await
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let filter = filter.clone();
        self.conn
            .call(move |conn| {
                use rusqlite::types::Value as V;
                let mut sql = String::from("SELECT data FROM jobs WHERE 1 = 1");
                let mut args: Vec<V> = Vec::new();
                if !filter.states.is_empty() {
                    sql.push_str(" AND state IN ");
                    sql.push_str(&placeholders(filter.states.len()));
                    args.extend(filter.states.iter().map(|s| V::Text(s.as_str().into())));
                }
                if let Some(task) = &filter.task {
                    sql.push_str(" AND task = ?");
                    args.push(V::Text(task.clone()));
                }
                if let Some(queue) = &filter.queue {
                    sql.push_str(" AND queue = ?");
                    args.push(V::Text(queue.clone()));
                }
                if let Some(parent) = filter.parent {
                    sql.push_str(" AND parent = ?");
                    args.push(V::Blob(parent.0.as_bytes().to_vec()));
                }
                if let Some(root) = filter.root {
                    sql.push_str(" AND root = ?");
                    args.push(V::Blob(root.0.as_bytes().to_vec()));
                }
                sql.push_str(" ORDER BY depth, ord, id");
                if let (Some(limit), true) = (filter.limit, filter.metadata.is_empty()) {
                    sql.push_str(&format!(" LIMIT {limit}"));
                }
                let mut jobs = load_many(conn, &sql, args)?;
                jobs.retain(|job| job.metadata_matches(&filter.metadata));
                if let Some(limit) = filter.limit {
                    jobs.truncate(limit);
                }
                Ok(jobs)
            })
            .await
    }

    async fn count_due(&self, queues: &[String], before: DateTime<Utc>) -> Result<usize> {
        let queues = queues.to_vec();
        self.conn
            .call(move |conn| {
                let sql = format!(
                    "SELECT COUNT(*) FROM jobs WHERE state = 'scheduled' AND eta <= ? AND queue IN {}",
                    placeholders(queues.len().max(1))
                );
                let mut args = vec![rusqlite::types::Value::Integer(micros(before))];
                args.extend(text_values(&queues));
                if queues.is_empty() {
                    return Ok(0);
                }
                let count: i64 = conn
                    .query_row(&sql, params_from_iter(args), |r| r.get(0))
                    .map_err(store_error)?;
                Ok(count as usize)
            })
            .await
    }

    async fn next_eta(&self, queues: &[String]) -> Result<Option<DateTime<Utc>>> {
        let queues = queues.to_vec();
        self.conn
            .call(move |conn| {
                if queues.is_empty() {
                    return Ok(None);
                }
                // The earliest eta of each priority level is the first entry of its index
                // range: no scan of the jobs waiting at that level.
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT eta FROM jobs INDEXED BY jobs_due
                         WHERE state = 'scheduled' AND queue = +?1 AND priority = +?2
                         ORDER BY eta LIMIT 1",
                    )
                    .map_err(store_error)?;
                let mut earliest: Option<i64> = None;
                for queue in &queues {
                    let mut level = next_priority(conn, queue, None)?;
                    while let Some(priority) = level {
                        let eta: Option<i64> = stmt
                            .query_row(params![queue, priority], |r| r.get(0))
                            .optional()
                            .map_err(store_error)?;
                        if let Some(eta) = eta {
                            earliest = Some(earliest.map_or(eta, |e| e.min(eta)));
                        }
                        level = next_priority(conn, queue, Some(priority))?;
                    }
                }
                Ok(earliest.and_then(DateTime::from_timestamp_micros))
            })
            .await
    }

    async fn cancel_scheduled(&self, queues: &[String]) -> Result<usize> {
        let queues = queues.to_vec();
        self.conn
            .call(move |conn| {
                if queues.is_empty() {
                    return Ok(0);
                }
                let sql = format!(
                    "SELECT data FROM jobs WHERE state = 'scheduled' AND queue IN {}",
                    placeholders(queues.len())
                );
                let jobs = load_many(conn, &sql, text_values(&queues))?;
                let now = Utc::now();
                for mut job in jobs.iter().cloned() {
                    apply_cancel_request(&mut job, now)?;
                    save(conn, &job)?;
                }
                Ok(jobs.len())
            })
            .await
    }

    async fn prune(&self, state: JobState, before: DateTime<Utc>, limit: usize) -> Result<usize> {
        check_prunable(state)?;
        self.conn
            .call(move |conn| {
                let ids: Vec<Vec<u8>> = {
                    let mut stmt = conn
                        .prepare_cached(
                            // A node of a tree stays while its root is active (a running
                            // workflow may still read its results): looked up by id.
                            "SELECT id FROM jobs AS j WHERE state = ?1 AND finished_at < ?2
                             AND (unique_key IS NULL OR unique_key NOT LIKE 'process:%')
                             AND (root = id OR NOT EXISTS (
                                 SELECT 1 FROM jobs AS r WHERE r.id = j.root
                                   AND r.state IN
                                       ('scheduled', 'running', 'cancel_requested', 'cancelling')))
                             LIMIT ?3",
                        )
                        .map_err(store_error)?;
                    let rows = stmt
                        .query_map(params![state.as_str(), micros(before), limit as i64], |r| {
                            r.get(0)
                        })
                        .map_err(store_error)?;
                    rows.collect::<rusqlite::Result<_>>().map_err(store_error)?
                };
                for id in &ids {
                    conn.prepare_cached("DELETE FROM job_logs WHERE job = ?1")
                        .and_then(|mut s| s.execute([id]))
                        .map_err(store_error)?;
                    conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")
                        .and_then(|mut s| s.execute([id]))
                        .map_err(store_error)?;
                }
                Ok(ids.len())
            })
            .await
    }

    async fn delete(&self, ids: &[JobId]) -> Result<usize> {
        let ids = ids.to_vec();
        self.conn
            .call(move |conn| {
                // One savepoint: an active job among them rolls every deletion back.
                let mut deleted = 0;
                for id in &ids {
                    let Some(job) = load(conn, *id)? else {
                        continue;
                    };
                    if job.state.is_active() {
                        return Err(Error::ActiveJob {
                            job: *id,
                            state: job.state,
                        });
                    }
                    for sql in [
                        "DELETE FROM job_logs WHERE job = ?1",
                        "DELETE FROM jobs WHERE id = ?1",
                    ] {
                        conn.prepare_cached(sql)
                            .and_then(|mut s| s.execute([id.0.as_bytes()]))
                            .map_err(store_error)?;
                    }
                    deleted += 1;
                }
                Ok(deleted)
            })
            .await
    }

    async fn clear_logs(&self, id: JobId) -> Result<()> {
        self.conn
            .call(move |conn| {
                require(conn, id)?;
                conn.prepare_cached("DELETE FROM job_logs WHERE job = ?1")
                    .and_then(|mut s| s.execute([id.0.as_bytes()]))
                    .map_err(store_error)?;
                Ok(())
            })
            .await
    }

    async fn claim_schedule_slot(&self, schedule: &str, slot: DateTime<Utc>) -> Result<bool> {
        let schedule = schedule.to_owned();
        self.conn
            .call(move |conn| {
                let changed = conn
                    .prepare_cached(
                        "INSERT INTO schedule_slots (name, slot) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET slot = excluded.slot
                         WHERE excluded.slot > schedule_slots.slot",
                    )
                    .and_then(|mut s| s.execute(params![schedule, micros(slot)]))
                    .map_err(store_error)?;
                Ok(changed > 0)
            })
            .await
    }

    async fn last_schedule_slot(&self, schedule: &str) -> Result<Option<DateTime<Utc>>> {
        let schedule = schedule.to_owned();
        self.conn
            .call(move |conn| {
                let slot: Option<i64> = conn
                    .prepare_cached("SELECT slot FROM schedule_slots WHERE name = ?1")
                    .and_then(|mut s| s.query_row([schedule], |r| r.get(0)).optional())
                    .map_err(store_error)?;
                Ok(slot.and_then(DateTime::from_timestamp_micros))
            })
            .await
    }
}
