//! `PostgresStore`: jobs in PostgreSQL, shared by any number of workers on any number of hosts.
//!
//! Indexed columns sit beside the whole job as `json`. Claims take due rows with
//! `FOR UPDATE SKIP LOCKED`; every other state write locks its row (`FOR UPDATE`), applies the
//! reference semantics of `tlo_core::transition`, and writes it back in the same transaction,
//! so PostgreSQL behaves exactly as the other stores and writes are fenced by attempt.
//! Completions of this process's own claims take a shorter way to the same result: applied
//! here to the job as claimed (`tlo_core::claimed`), and written, without a lock, only where
//! the row still lies where the claim left it (`ctid`) and still holds that claim
//! (`claimed_at`).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient as _, Object, Pool};
use tlo_core::claimed::ClaimedDocs;
use tlo_core::transition::{
    Change, apply_acknowledge_cancel, apply_cancel_request, apply_change, apply_claim,
    apply_progress, apply_relaunch, apply_rescue, check_prunable,
};
use tlo_core::{
    CancelOutcome, ClaimRequest, Completion, DateTime, Enqueued, Error, Job, JobFilter, JobId,
    JobState, LogEntry, NewJob, Progress, Result, Store, Utc, async_trait,
};
use tokio_postgres::Transaction;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::hot_sql::HotSql;
use crate::pipeline::Pipelined;
use crate::pool::{check_schema, config, db_error, pg_error, pool, redact};
use crate::writes::Locked;
use crate::{listen, schema};

/// How to connect: schema, migrations, pool size.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The schema holding tlo's tables (default `tlo`): one per application or per test.
    pub schema: String,
    /// Apply pending migrations on connect (default true; `tlo migrate` does it explicitly).
    pub migrate: bool,
    /// Connections in the pool (default 16).
    pub pool_size: usize,
    /// Wake workers by LISTEN/NOTIFY (default true). False: workers find new jobs by polling
    /// alone, every `poll_interval`; for a deployment that cannot keep one more connection per
    /// process open for LISTEN, or whose proxy does not pass notifications on.
    pub listen: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "tlo".into(),
            migrate: true,
            pool_size: 16,
            listen: true,
        }
    }
}

/// A store in a PostgreSQL database.
///
/// ```no_run
/// # async fn demo() -> tlo_core::Result<()> {
/// use tlo_core::{NewJob, Store};
/// let store = tlo_postgres::PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// store.enqueue(vec![NewJob::new("greet", serde_json::json!({"name": "Ada"}))]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    pub(crate) schema: Arc<str>,
    pub(crate) url: Arc<str>,
    pub(crate) sql: Arc<HotSql>,
    /// This process's claims, so that completions are prepared before they are sent, each
    /// with where its row lay after the claim (`ctid`, as text). The fence of each claim is
    /// its time (`claimed_at`), kept in the job.
    pub(crate) claimed: Arc<ClaimedDocs<String>>,
    /// Whether workers are woken by LISTEN/NOTIFY ([`PostgresOptions::listen`]).
    listen: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .finish()
    }
}

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The columns [`job_of`] reads: select them wherever a job is read.
pub(crate) const JOB: &str = "data, claimed_at, worker, lease_until";

/// The job in `row` (selected with [`JOB`]): its document, with the claim made since applied.
pub(crate) fn job_of(row: &tokio_postgres::Row) -> Result<Job> {
    let Json(mut job) = row.try_get::<_, Json<Job>>("data").map_err(db_error)?;
    let claimed_at: Option<i64> = row.try_get("claimed_at").map_err(db_error)?;
    if let Some(at) = claimed_at.and_then(DateTime::from_timestamp_micros) {
        let worker: Option<String> = row.try_get("worker").map_err(db_error)?;
        let lease_until: Option<i64> = row.try_get("lease_until").map_err(db_error)?;
        apply_claim(
            &mut job,
            worker.as_deref().unwrap_or_default(),
            at,
            Duration::ZERO,
        )?;
        // Renewed since the claim, perhaps.
        job.lease_until = lease_until.and_then(DateTime::from_timestamp_micros);
    }
    Ok(job)
}

/// `at` as stored (whole microseconds): a claim's time, so that the claimer's job and what
/// readers rebuild from the columns are the same.
pub(crate) fn stored(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros(at)).unwrap_or(at)
}

impl PostgresStore {
    /// Connects with default options (schema `tlo`, migrations applied).
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with `options`. An unreachable server is an error naming the URL (without its
    /// password).
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<PostgresStore> {
        check_schema(&options.schema)?;
        let pool = pool(config(url)?, options.pool_size.max(1))?;
        let store = PostgresStore {
            pool,
            sql: Arc::new(HotSql::new(&options.schema)),
            schema: options.schema.into(),
            url: url.into(),
            claimed: Arc::default(),
            listen: options.listen,
        };
        let mut client = store.client().await?;
        if options.migrate {
            schema::migrate(&mut client, &store.schema).await?;
        } else {
            schema::check_version(&client, &store.schema).await?;
        }
        Ok(store)
    }

    /// Applies pending migrations; returns the versions applied (empty when up to date).
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let mut client = self.client().await?;
        schema::migrate(&mut client, &self.schema).await
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A [`PostgresLocker`](crate::PostgresLocker) on the same database and schema.
    pub fn locker(&self) -> crate::PostgresLocker {
        crate::PostgresLocker::new(self.pool.clone(), self.schema.clone(), self.url.clone())
    }

    /// Drops the schema with everything in it. For tests and tear-downs only.
    pub async fn drop_schema(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await
            .map_err(db_error)
    }

    pub(crate) async fn client(&self) -> Result<Object> {
        client(&self.pool, &self.url).await
    }

    pub(crate) fn channel(&self) -> String {
        format!("{}_jobs", self.schema)
    }

    pub(crate) fn t(&self, table: &str) -> String {
        format!("{}.{table}", self.schema)
    }

    /// Enqueues inside the caller's transaction: the jobs exist (and workers are woken) only if
    /// it commits.
    pub async fn enqueue_in(
        &self,
        tx: &Transaction<'_>,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        let statement = tx.prepare(&self.sql.insert).await.map_err(db_error)?;
        self.insert(tx, &statement, jobs).await
    }
}

pub(crate) async fn client(pool: &Pool, url: &str) -> Result<Object> {
    pool.get().await.map_err(|err| {
        // The cause (refused, timed out, no such database) is in the sources, not the error.
        let mut text = format!("cannot connect to {}: {err}", redact(url));
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(&format!(": {cause_text}"));
            }
            source = cause.source();
        }
        pg_error(text)
    })
}

#[async_trait]
impl Store for PostgresStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn round_concurrency(&self) -> usize {
        // One round at a time: the runners that finish meanwhile all join the next one, so
        // there are fewer statements and commits per job. Measured on a 16-runner drain
        // (`tlo bench --store postgres`): 6,700-7,600 jobs/s with one, 6,200-6,900 with two,
        // 5,400-6,700 with four; latency unchanged.
        1
    }

    fn subscribe_wakeups(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        if !self.listen {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(listen::listen(self.url.to_string(), self.channel(), wake));
            }
            Err(_) => tracing::warn!(
                "postgres: no tokio runtime at build time; workers poll instead of listening"
            ),
        }
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        // One statement is its own transaction.
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.insert)
            .await
            .map_err(db_error)?;
        self.insert(&**client, &statement, jobs).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Job>> {
        let tx = Pipelined::new(self.client().await?);
        let claimed = self.claim_and_commit(&tx, request).await?;
        tx.finish();
        Ok(self.remember(claimed))
    }

    async fn enqueue_and_claim(
        &self,
        jobs: Vec<NewJob>,
        next: &ClaimRequest,
    ) -> Result<(Vec<Enqueued>, Result<Vec<Job>>)> {
        let tx = Pipelined::new(self.client().await?);
        let insert = tx
            .db()
            .prepare_cached(&self.sql.insert)
            .await
            .map_err(db_error)?;
        let client: &tokio_postgres::Client = tx.db();
        // The insert is sent first and commits on its own, before the claim's BEGIN: the jobs
        // are stored (and the claim sees them) whatever becomes of the claim.
        let (enqueued, claimed) = tokio::join!(
            self.insert(client, &insert, jobs),
            self.claim_and_commit(&tx, next)
        );
        let claimed = claimed.map(|claimed| {
            tx.finish();
            self.remember(claimed)
        });
        if let (Err(err), Ok(jobs)) = (&enqueued, &claimed) {
            // Two transactions: the claim committed though the insert failed. The caller hears
            // of the failure only, so these jobs have no runner here; they are rescued (and run)
            // once their lease ends.
            tracing::warn!(error = %err, claimed = jobs.len(), "enqueue failed after a claim");
        }
        Ok((enqueued?, claimed))
    }

    async fn complete_many(&self, completions: Vec<Completion>) -> Result<Vec<Result<Job>>> {
        self.record_completions(completions).await
    }

    async fn complete(&self, completion: Completion) -> Result<Job> {
        self.complete_many(vec![completion])
            .await?
            .pop()
            .expect("one result per completion")
    }

    async fn change(&self, id: JobId, change: Change) -> Result<Job> {
        self.modify(id, |job| apply_change(job, &change, Utc::now()))
            .await
            .map(|(_, job)| job)
    }

    async fn change_many(&self, changes: Vec<(JobId, Change)>) -> Result<Vec<Result<Job>>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let ids: Vec<Uuid> = changes.iter().map(|(id, _)| id.0).collect();
        let mut locked = Locked::new(self.lock_rows(&tx, &ids).await?)?;
        let now = Utc::now();
        // A job named twice sees its first change, and is written once.
        let results: Vec<Result<Job>> = changes
            .iter()
            .map(|(id, change)| locked.apply(*id, |job| apply_change(job, change, now)))
            .collect();
        self.save(&tx, &locked.into_writes()).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(results)
    }

    async fn relaunch(&self, id: JobId, eta: DateTime<Utc>) -> Result<Job> {
        self.modify(id, |job| apply_relaunch(job, eta))
            .await
            .map(|(_, job)| job)
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome> {
        self.modify(id, |job| apply_cancel_request(job, Utc::now()))
            .await
            .map(|(outcome, _)| outcome)
    }

    async fn acknowledge_cancel(&self, id: JobId, attempt: u32) -> Result<()> {
        self.modify(id, |job| apply_acknowledge_cancel(job, attempt))
            .await
            .map(drop)
    }

    async fn renew_leases(
        &self,
        worker: &str,
        jobs: &[(JobId, u32)],
        until: DateTime<Utc>,
    ) -> Result<Vec<(JobId, JobState)>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let ids: Vec<Uuid> = jobs.iter().map(|(id, _)| id.0).collect();
        let attempts: Vec<i64> = jobs.iter().map(|(_, a)| i64::from(*a)).collect();
        let until_json = serde_json::to_value(until).map_err(Error::Serialization)?;
        let rows = client
            .query(
                &format!(
                    "WITH held AS (
                         SELECT j.id FROM {jobs} AS j
                         JOIN unnest($1::uuid[], $2::int8[]) AS u(id, attempt) ON j.id = u.id
                         -- A claim not yet written into the document is one attempt on.
                         WHERE (j.data->>'attempt')::int8 + (j.claimed_at IS NOT NULL)::int
                               = u.attempt
                           AND j.worker = $5
                           AND j.state IN ('running', 'cancel_requested', 'cancelling')
                         ORDER BY j.id
                         FOR UPDATE OF j
                     )
                     UPDATE {jobs} AS j SET lease_until = $3,
                         data = jsonb_set(j.data::jsonb, '{{lease_until}}', $4)::json
                     FROM held WHERE j.id = held.id
                     RETURNING j.id, j.state",
                    jobs = self.t("jobs")
                ),
                &[&ids, &attempts, &micros(until), &Json(until_json), &worker],
            )
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let state: String = row.get(1);
                Ok((JobId(row.get(0)), state.parse()?))
            })
            .collect()
    }

    async fn rescue_expired(&self, now: DateTime<Utc>) -> Result<Vec<Job>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {JOB} FROM {} WHERE state IN ('running', 'cancel_requested', 'cancelling')
                       AND lease_until < $1 FOR UPDATE SKIP LOCKED",
                    self.t("jobs")
                ),
                &[&micros(now)],
            )
            .await
            .map_err(db_error)?;
        let mut rescued = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut job = job_of(row)?;
            apply_rescue(&mut job, now);
            rescued.push(job);
        }
        self.save(&tx, &rescued).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(rescued)
    }

    async fn set_progress(&self, id: JobId, attempt: u32, progress: Progress) -> Result<()> {
        self.modify(id, |job| apply_progress(job, attempt, progress))
            .await
            .map(drop)
    }

    async fn append_logs(&self, id: JobId, entries: Vec<LogEntry>) -> Result<()> {
        let client = self.client().await?;
        self.exists(&**client, id).await?;
        let data: Vec<Json<&LogEntry>> = entries.iter().map(Json).collect();
        client
            .execute(
                &format!(
                    "INSERT INTO {} (job, data) SELECT $1, d FROM unnest($2::jsonb[])
                     WITH ORDINALITY AS t(d, n) ORDER BY n",
                    self.t("job_logs")
                ),
                &[&id.0, &data],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn logs(&self, id: JobId) -> Result<Vec<LogEntry>> {
        self.read_logs(id).await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>> {
        self.read_job(id).await
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        self.read_jobs(filter).await
    }

    async fn count_due(&self, queues: &[String], before: DateTime<Utc>) -> Result<usize> {
        self.read_count_due(queues, before).await
    }

    async fn next_eta(&self, queues: &[String]) -> Result<Option<DateTime<Utc>>> {
        self.read_next_eta(queues).await
    }

    async fn cancel_scheduled(&self, queues: &[String]) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {JOB} FROM {} WHERE state = 'scheduled' AND queue = ANY($1)
                     FOR UPDATE SKIP LOCKED",
                    self.t("jobs")
                ),
                &[&queues],
            )
            .await
            .map_err(db_error)?;
        let now = Utc::now();
        let mut cancelled = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut job = job_of(row)?;
            apply_cancel_request(&mut job, now)?;
            cancelled.push(job);
        }
        self.save(&tx, &cancelled).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(cancelled.len())
    }

    async fn prune(&self, state: JobState, before: DateTime<Utc>, limit: usize) -> Result<usize> {
        check_prunable(state)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        // A node of a tree stays while its root is active (a running workflow may still read
        // its results). The root's state is a scalar subquery: looked up by primary key for
        // each candidate only (a NOT EXISTS here may be planned as a hash over every active
        // job, a scan of the whole table).
        let rows = tx
            .query(
                &format!(
                    "DELETE FROM {jobs} WHERE id IN (
                         SELECT j.id FROM {jobs} AS j WHERE j.state = $1 AND j.finished_at < $2
                           AND (j.unique_key IS NULL OR j.unique_key NOT LIKE 'process:%')
                           AND (j.root = j.id OR COALESCE(
                               (SELECT r.state FROM {jobs} AS r WHERE r.id = j.root), 'gone')
                               NOT IN ('scheduled', 'running', 'cancel_requested', 'cancelling'))
                         LIMIT $3 FOR UPDATE OF j SKIP LOCKED)
                     RETURNING id",
                    jobs = self.t("jobs")
                ),
                &[&state.as_str(), &micros(before), &(limit as i64)],
            )
            .await
            .map_err(db_error)?;
        let ids: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
        self.delete_logs(&tx, &ids).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(ids.len())
    }

    async fn delete(&self, ids: &[JobId]) -> Result<usize> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let rows = tx
            .query(
                &format!(
                    "SELECT id, state FROM {} WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                    self.t("jobs")
                ),
                &[&ids],
            )
            .await
            .map_err(db_error)?;
        for row in &rows {
            let state: JobState = row.get::<_, String>(1).parse()?;
            if state.is_active() {
                return Err(Error::ActiveJob {
                    job: JobId(row.get(0)),
                    state,
                });
            }
        }
        let deleted = tx
            .execute(
                &format!("DELETE FROM {} WHERE id = ANY($1)", self.t("jobs")),
                &[&ids],
            )
            .await
            .map_err(db_error)?;
        self.delete_logs(&tx, &ids).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(deleted as usize)
    }

    async fn clear_logs(&self, id: JobId) -> Result<()> {
        let client = self.client().await?;
        self.exists(&**client, id).await?;
        client
            .execute(
                &format!("DELETE FROM {} WHERE job = $1", self.t("job_logs")),
                &[&id.0],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn claim_schedule_slot(&self, schedule: &str, slot: DateTime<Utc>) -> Result<bool> {
        let client = self.client().await?;
        let changed = client
            .execute(
                &format!(
                    "INSERT INTO {t} (name, slot) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET slot = excluded.slot
                     WHERE {t}.slot < excluded.slot",
                    t = self.t("schedule_slots")
                ),
                &[&schedule, &micros(slot)],
            )
            .await
            .map_err(db_error)?;
        Ok(changed > 0)
    }

    async fn last_schedule_slot(&self, schedule: &str) -> Result<Option<DateTime<Utc>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT slot FROM {} WHERE name = $1",
                    self.t("schedule_slots")
                ),
                &[&schedule],
            )
            .await
            .map_err(db_error)?;
        Ok(row
            .map(|r| r.get::<_, i64>(0))
            .and_then(DateTime::from_timestamp_micros))
    }
}

/// Backoff between reconnection attempts, capped.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5_000))
}
