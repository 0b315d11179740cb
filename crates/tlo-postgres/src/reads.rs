//! How [`PostgresStore`](crate::PostgresStore) answers queries: jobs by id or filter, log
//! lines, and what is due (the `Store` impl delegates here).

use tlo_core::{DateTime, Job, JobFilter, JobId, LogEntry, Result, Utc};
use tokio_postgres::types::{Json, ToSql};

use crate::PostgresStore;
use crate::pool::db_error;
use crate::store::{JOB, job_of, micros};

impl PostgresStore {
    /// The log lines of job `id`, in order; an unknown job is not found.
    pub(crate) async fn read_logs(&self, id: JobId) -> Result<Vec<LogEntry>> {
        let client = self.client().await?;
        self.exists(&**client, id).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT data FROM {} WHERE job = $1 ORDER BY seq",
                    self.t("job_logs")
                ),
                &[&id.0],
            )
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                row.try_get::<_, Json<LogEntry>>(0)
                    .map(|Json(entry)| entry)
                    .map_err(db_error)
            })
            .collect()
    }

    /// Job `id`, if stored.
    pub(crate) async fn read_job(&self, id: JobId) -> Result<Option<Job>> {
        let client = self.client().await?;
        // Prepared once per connection: read for every child a parent waits on, every
        // handle's wait, every `tlo show` (an unprepared query is parsed and planned each time,
        // and costs a second round trip).
        let statement = client
            .prepare_cached(&self.sql.get)
            .await
            .map_err(db_error)?;
        client
            .query_opt(&statement, &[&id.0])
            .await
            .map_err(db_error)?
            .map(|row| job_of(&row))
            .transpose()
    }

    /// The jobs matching `filter`, in tree order (depth, order, id).
    pub(crate) async fn read_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let client = self.client().await?;
        let mut sql = format!("SELECT {JOB} FROM {} WHERE true", self.t("jobs"));
        let parent = filter.parent.map(|p| p.0);
        let root = filter.root.map(|r| r.0);
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if !filter.states.is_empty() {
            // One literal comparison each (state names are fixed words), so that the planner
            // sees which partial index covers each: `scheduled` is `jobs_due`, the executing
            // states `jobs_executing`; several are read through both (a bitmap OR). The
            // scheduler's overlap check (a task's active jobs) reads no finished job.
            let states: Vec<String> = filter
                .states
                .iter()
                .map(|state| format!("state = '{}'", state.as_str()))
                .collect();
            sql.push_str(&format!(" AND ({})", states.join(" OR ")));
        }
        if let Some(task) = &filter.task {
            params.push(task);
            sql.push_str(&format!(" AND task = ${}", params.len()));
        }
        if let Some(queue) = &filter.queue {
            params.push(queue);
            sql.push_str(&format!(" AND queue = ${}", params.len()));
        }
        if let Some(parent) = &parent {
            params.push(parent);
            sql.push_str(&format!(" AND parent = ${}", params.len()));
        }
        if let Some(root) = &root {
            params.push(root);
            // The root itself, or its descendants through the child-only index.
            let n = params.len();
            sql.push_str(&format!(
                " AND (id = ${n} OR (root = ${n} AND parent IS NOT NULL))"
            ));
        }
        let metadata = serde_json::Value::Object(filter.metadata.clone());
        let metadata = Json(metadata);
        if !filter.metadata.is_empty() {
            params.push(&metadata);
            sql.push_str(&format!(
                " AND (data->'metadata')::jsonb @> ${}",
                params.len()
            ));
        }
        sql.push_str(" ORDER BY depth, ord, id");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let rows = client.query(&sql, &params).await.map_err(db_error)?;
        let mut jobs = rows.iter().map(job_of).collect::<Result<Vec<_>>>()?;
        // Containment (@>) matches nested values loosely; keep the exact AND-match semantics.
        jobs.retain(|job| job.metadata_matches(&filter.metadata));
        Ok(jobs)
    }

    /// How many scheduled jobs of `queues` are due by `before`.
    pub(crate) async fn read_count_due(
        &self,
        queues: &[String],
        before: DateTime<Utc>,
    ) -> Result<usize> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "SELECT COUNT(*) FROM {} WHERE state = 'scheduled' AND eta <= $1
                     AND queue = ANY($2)",
                    self.t("jobs")
                ),
                &[&micros(before), &queues],
            )
            .await
            .map_err(db_error)?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    /// The earliest eta among the scheduled jobs of `queues`.
    pub(crate) async fn read_next_eta(&self, queues: &[String]) -> Result<Option<DateTime<Utc>>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.sql.next_eta)
            .await
            .map_err(db_error)?;
        let row = client
            .query_one(&statement, &[&queues])
            .await
            .map_err(db_error)?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .and_then(DateTime::from_timestamp_micros))
    }
}
