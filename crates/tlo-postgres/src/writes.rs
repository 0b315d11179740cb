//! How [`PostgresStore`](crate::PostgresStore) reads and writes job rows: batched inserts and
//! saves, locked read-modify-write, and claims.

use deadpool_postgres::{GenericClient as PooledClient, Transaction as DbTransaction};
use tlo_core::claimed::Prepared;
use tlo_core::transition::{apply_claim, apply_completion, claim_order};
use tlo_core::{ClaimRequest, Completion, Enqueued, Error, Job, JobId, NewJob, Result, Utc};
use tokio_postgres::GenericClient;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

use crate::PostgresStore;
use crate::pipeline::Pipelined;
use crate::pool::db_error;
use crate::store::{job_of, micros, stored};

impl PostgresStore {
    /// Inserts with `statement` (the prepared [`HotSql::insert`](crate::hot_sql::HotSql)).
    pub(crate) async fn insert<C: GenericClient>(
        &self,
        db: &C,
        statement: &tokio_postgres::Statement,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let jobs: Vec<Job> = jobs.into_iter().map(|new| new.into_job(now)).collect();
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id.0).collect();
        let tasks: Vec<&str> = jobs.iter().map(|j| j.task.as_str()).collect();
        let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        let states: Vec<&str> = jobs.iter().map(|j| j.state.as_str()).collect();
        let priorities: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
        let etas: Vec<i64> = jobs.iter().map(|j| micros(j.eta)).collect();
        let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.unique_key.as_deref()).collect();
        let parents: Vec<Option<Uuid>> = jobs.iter().map(|j| j.parent.map(|p| p.0)).collect();
        let roots: Vec<Uuid> = jobs.iter().map(|j| j.root.0).collect();
        let depths: Vec<i32> = jobs.iter().map(|j| j.depth as i32).collect();
        let orders: Vec<i32> = jobs.iter().map(|j| j.order as i32).collect();
        let data: Vec<Json<&Job>> = jobs.iter().map(Json).collect();
        let channel = self.channel();
        let params: [&(dyn ToSql + Sync); 13] = [
            &ids,
            &tasks,
            &queues,
            &states,
            &priorities,
            &etas,
            &keys,
            &parents,
            &roots,
            &depths,
            &orders,
            &data,
            &channel,
        ];
        let inserted: std::collections::HashSet<Uuid> = db
            .query(statement, &params)
            .await
            .map_err(db_error)?
            .iter()
            .map(|row| row.get::<_, Uuid>(0))
            .collect();
        let mut out = Vec::with_capacity(jobs.len());
        for job in &jobs {
            if inserted.contains(&job.id.0) {
                out.push(Enqueued {
                    id: job.id,
                    inserted: true,
                });
                continue;
            }
            let key = job.unique_key.as_deref().unwrap_or_default();
            let row = db
                .query_one(
                    &format!("SELECT id FROM {} WHERE unique_key = $1", self.t("jobs")),
                    &[&key],
                )
                .await
                .map_err(db_error)?;
            out.push(Enqueued {
                id: JobId(row.get(0)),
                inserted: false,
            });
        }
        Ok(out)
    }

    /// Writes back changed jobs in one statement, which also wakes the workers when one of them
    /// is `scheduled` again.
    pub(crate) async fn save<C: PooledClient>(&self, db: &C, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let statement = db.prepare_cached(&self.sql.save).await.map_err(db_error)?;
        self.save_prepared(db, &statement, jobs).await
    }

    /// Writes back `jobs` and commits `tx`, in one round trip.
    pub(crate) async fn save_and_commit(&self, tx: Pipelined, jobs: &[Job]) -> Result<()> {
        // Prepared before the join: a statement still being prepared when the COMMIT goes out
        // would run after it, outside the transaction (and after its row locks are gone).
        let statement = tx
            .db()
            .prepare_cached(&self.sql.save)
            .await
            .map_err(db_error)?;
        tokio::try_join!(self.save_prepared(tx.db(), &statement, jobs), tx.commit())?;
        tx.finish();
        Ok(())
    }

    /// [`PostgresStore::save`] with its statement prepared: the write is sent when the future
    /// is first polled, before anything polled after it.
    async fn save_prepared<C: PooledClient>(
        &self,
        db: &C,
        statement: &tokio_postgres::Statement,
        jobs: &[Job],
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let data = jobs
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<String>, _>>()
            .map_err(Error::Serialization)?;
        let columns = Columns::of(jobs.iter());
        let channel = self.channel();
        let mut params = columns.params();
        params.extend([&data as &(dyn ToSql + Sync), &channel]);
        db.execute(statement, &params).await.map_err(db_error)?;
        Ok(())
    }

    /// Writes completions prepared from this process's claims, each only if its row still holds
    /// that claim, in one statement; returns the ids written.
    pub(crate) async fn save_claimed<C: PooledClient>(
        &self,
        db: &C,
        prepared: &[Prepared<String>],
    ) -> Result<std::collections::HashSet<Uuid>> {
        if prepared.is_empty() {
            return Ok(Default::default());
        }
        let statement = db
            .prepare_cached(&self.sql.save_claimed)
            .await
            .map_err(db_error)?;
        let columns = Columns::of(prepared.iter().map(|p| &p.job));
        let data: Vec<&str> = prepared.iter().map(|p| p.encoded.as_str()).collect();
        let claimed_at: Vec<Option<i64>> =
            prepared.iter().map(|p| p.claimed_at.map(micros)).collect();
        let tids: Vec<&str> = prepared.iter().map(|p| p.written.as_str()).collect();
        let channel = self.channel();
        let mut params = columns.params();
        params.extend([&data as &(dyn ToSql + Sync), &channel, &claimed_at, &tids]);
        let rows = db.query(&statement, &params).await.map_err(db_error)?;
        Ok(rows
            .iter()
            .filter_map(|row| row.get::<_, Option<Uuid>>(0))
            .collect())
    }

    /// Remembers the jobs just claimed, each with where its row lies; returns them.
    pub(crate) fn remember(&self, claimed: Vec<(Job, String)>) -> Vec<Job> {
        claimed
            .into_iter()
            .map(|(job, tid)| {
                self.claimed.remember(&job, tid);
                job
            })
            .collect()
    }

    /// Records `completions`, each applied or refused alone: those of this process's claims
    /// prepared here and written in one statement, each only where nothing else wrote the job
    /// since its claim; the rest (and any such job written meanwhile) on their locked rows.
    pub(crate) async fn record_completions(
        &self,
        completions: Vec<Completion>,
    ) -> Result<Vec<Result<Job>>> {
        let mut results: Vec<Option<Result<Job>>> = Vec::with_capacity(completions.len());
        let mut prepared = Vec::new();
        for completion in &completions {
            results.push(None);
            if let Some(ready) = self.claimed.prepare(completion) {
                prepared.push((results.len() - 1, ready));
            }
        }
        if !prepared.is_empty() {
            // In id order, as every batch locks rows, so that concurrent batches never deadlock.
            prepared.sort_by_key(|(_, ready)| ready.job.id.0);
            let (places, ready): (Vec<usize>, Vec<Prepared<String>>) = prepared.into_iter().unzip();
            let client = self.client().await?;
            let written = self.save_claimed(&client, &ready).await?;
            for (at, ready) in places.into_iter().zip(ready) {
                if written.contains(&ready.job.id.0) {
                    results[at] = Some(Ok(ready.job));
                }
            }
        }
        let rest: Vec<(usize, Completion)> = completions
            .into_iter()
            .enumerate()
            .filter(|(at, _)| results[*at].is_none())
            .collect();
        if !rest.is_empty() {
            let (places, rest): (Vec<usize>, Vec<Completion>) = rest.into_iter().unzip();
            for (at, result) in places.into_iter().zip(self.complete_locked(rest).await?) {
                results[at] = Some(result);
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Records `completions` on their locked rows, in one transaction, each applied or refused
    /// alone.
    pub(crate) async fn complete_locked(
        &self,
        completions: Vec<Completion>,
    ) -> Result<Vec<Result<Job>>> {
        let tx = Pipelined::new(self.client().await?);
        let ids: Vec<Uuid> = completions.iter().map(|c| c.id.0).collect();
        let ((), rows) = tokio::try_join!(tx.begin(), self.lock_rows(tx.db(), &ids))?;
        let mut locked = Locked::new(rows)?;
        let results = completions
            .iter()
            .map(|completion| locked.apply(completion.id, |job| apply_completion(job, completion)))
            .collect::<Vec<Result<Job>>>();
        self.save_and_commit(tx, &locked.into_writes()).await?;
        Ok(results)
    }

    /// Locks the rows of `ids` in `tx` (in id order, so that concurrent batches never
    /// deadlock); the caller applies its changes with [`Locked`].
    pub(crate) async fn lock_rows<C: PooledClient>(
        &self,
        tx: &C,
        ids: &[Uuid],
    ) -> Result<Vec<tokio_postgres::Row>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let statement = tx
            .prepare_cached(&self.sql.lock_many)
            .await
            .map_err(db_error)?;
        tx.query(&statement, &[&ids]).await.map_err(db_error)
    }

    /// Deletes the log lines of the jobs `ids` (deleted or pruned with them).
    pub(crate) async fn delete_logs(&self, tx: &DbTransaction<'_>, ids: &[Uuid]) -> Result<()> {
        tx.execute(
            &format!("DELETE FROM {} WHERE job = ANY($1)", self.t("job_logs")),
            &[&ids],
        )
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Locks one job's row, applies `change`, writes it back; all or nothing.
    pub(crate) async fn modify<T>(
        &self,
        id: JobId,
        change: impl FnOnce(&mut Job) -> Result<T>,
    ) -> Result<(T, Job)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let statement = tx
            .prepare_cached(&self.sql.lock_one)
            .await
            .map_err(db_error)?;
        let row = tx
            .query_opt(&statement, &[&id.0])
            .await
            .map_err(db_error)?
            .ok_or(Error::JobNotFound(id))?;
        let mut job = job_of(&row)?;
        let out = change(&mut job)?;
        self.save(&tx, std::slice::from_ref(&job)).await?;
        tx.commit().await.map_err(db_error)?;
        Ok((out, job))
    }

    /// Claims due jobs for `request` in `tx` and commits it (the caller then
    /// [finishes](Pipelined::finish) it): one round trip when one queue is asked (one
    /// statement), two for several (their candidates, then the best of them). The claim is
    /// written in columns (migration 4); the jobs come back with it applied, each with where its
    /// row now lies (`ctid`).
    pub(crate) async fn claim_and_commit(
        &self,
        tx: &Pipelined,
        request: &ClaimRequest,
    ) -> Result<Vec<(Job, String)>> {
        // Whole microseconds, as stored: the claimer's job and what readers rebuild from the
        // columns must be the same.
        let now = stored(request.now);
        let lease_until = micros(now + request.lease);
        let demands: Vec<_> = request.queues.iter().filter(|d| d.limit > 0).collect();
        if demands.is_empty() || request.limit == 0 {
            // Nothing asked: no transaction was begun, the connection is as it was.
            return Ok(Vec::new());
        }
        // A claim lost in a server crash only puts the job back to `scheduled`: it runs again
        // and the stale worker's completion is fenced off. Not waiting for the WAL flush here
        // saves a disk sync per claim; enqueues and completions stay fully durable.
        // It only has to hold by the commit: sent along with the claim, it costs no round trip.
        let relaxed = async {
            tx.db()
                .batch_execute("SET LOCAL synchronous_commit TO OFF")
                .await
                .map_err(db_error)
        };
        let rows = if let [demand] = demands.as_slice() {
            // Prepared before the join: a statement still being prepared when the COMMIT goes
            // out would run after it, outside the transaction.
            let claim = tx
                .db()
                .prepare_cached(&self.sql.claim)
                .await
                .map_err(db_error)?;
            let limit = demand.limit.min(request.limit) as i64;
            let params: [&(dyn ToSql + Sync); 5] = [
                &demand.queue,
                &micros(now),
                &limit,
                &request.worker,
                &lease_until,
            ];
            let query = async { tx.db().query(&claim, &params).await.map_err(db_error) };
            let ((), (), rows, ()) = tokio::try_join!(tx.begin(), relaxed, query, tx.commit())?;
            rows
        } else {
            let candidates = tx
                .db()
                .prepare_cached(&self.sql.claim_candidates)
                .await
                .map_err(db_error)?;
            let claim_ids = tx
                .db()
                .prepare_cached(&self.sql.claim_ids)
                .await
                .map_err(db_error)?;
            let at = micros(now);
            let limits: Vec<i64> = demands
                .iter()
                .map(|d| d.limit.min(request.limit) as i64)
                .collect();
            let (db, candidates, at) = (tx.db(), &candidates, &at);
            let reads = demands
                .iter()
                .zip(&limits)
                .map(|(demand, limit)| async move {
                    let params: [&(dyn ToSql + Sync); 3] = [&demand.queue, at, limit];
                    db.query(candidates, &params).await.map_err(db_error)
                });
            let ((), (), found) = tokio::try_join!(
                tx.begin(),
                relaxed,
                futures_util::future::try_join_all(reads)
            )?;
            // The best across the queues, as one queue's index orders them.
            let mut found: Vec<(i32, i64, i64, Uuid)> = found
                .iter()
                .flatten()
                .map(|row| (row.get(2), row.get(3), row.get(1), row.get(0)))
                .collect();
            found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            found.truncate(request.limit);
            let ids: Vec<Uuid> = found.iter().map(|f| f.3).collect();
            let params: [&(dyn ToSql + Sync); 4] = [&ids, &request.worker, &lease_until, at];
            let query = async { tx.db().query(&claim_ids, &params).await.map_err(db_error) };
            let (rows, ()) = tokio::try_join!(query, tx.commit())?;
            rows
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let Json(mut job) = row.try_get::<_, Json<Job>>(1).map_err(db_error)?;
            apply_claim(&mut job, &request.worker, now, request.lease)?;
            let tid: String = row.try_get(2).map_err(db_error)?;
            claimed.push((row.get::<_, i64>(0), job, tid));
        }
        claimed.sort_by(|(sa, a, _), (sb, b, _)| claim_order(a, *sa, b, *sb));
        Ok(claimed
            .into_iter()
            .map(|(_, job, tid)| (job, tid))
            .collect())
    }

    pub(crate) async fn exists<C: GenericClient>(&self, db: &C, id: JobId) -> Result<()> {
        db.query_opt(
            &format!("SELECT 1 FROM {} WHERE id = $1", self.t("jobs")),
            &[&id.0],
        )
        .await
        .map_err(db_error)?
        .map(drop)
        .ok_or(Error::JobNotFound(id))
    }
}

/// The indexed columns of jobs being written back, one array per column, in the order of the
/// `save` statements' first eight parameters.
struct Columns<'a> {
    ids: Vec<Uuid>,
    states: Vec<&'a str>,
    queues: Vec<&'a str>,
    priorities: Vec<i32>,
    etas: Vec<i64>,
    workers: Vec<Option<&'a str>>,
    leases: Vec<Option<i64>>,
    finished: Vec<Option<i64>>,
}

impl<'a> Columns<'a> {
    fn of(jobs: impl Iterator<Item = &'a Job>) -> Columns<'a> {
        let mut columns = Columns {
            ids: Vec::new(),
            states: Vec::new(),
            queues: Vec::new(),
            priorities: Vec::new(),
            etas: Vec::new(),
            workers: Vec::new(),
            leases: Vec::new(),
            finished: Vec::new(),
        };
        for job in jobs {
            columns.ids.push(job.id.0);
            columns.states.push(job.state.as_str());
            columns.queues.push(job.queue.as_str());
            columns.priorities.push(job.priority);
            columns.etas.push(micros(job.eta));
            columns.workers.push(job.worker.as_deref());
            columns.leases.push(job.lease_until.map(micros));
            columns.finished.push(job.finished_at.map(micros));
        }
        columns
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.ids,
            &self.states,
            &self.queues,
            &self.priorities,
            &self.etas,
            &self.workers,
            &self.leases,
            &self.finished,
        ]
    }
}

/// Rows locked in a transaction, changed in memory one request at a time, then written back
/// once each.
pub(crate) struct Locked {
    jobs: std::collections::HashMap<Uuid, Job>,
    changed: Vec<Uuid>,
}

impl Locked {
    pub(crate) fn new(rows: Vec<tokio_postgres::Row>) -> Result<Locked> {
        let jobs = rows
            .iter()
            .map(|row| job_of(row).map(|job| (job.id.0, job)))
            .collect::<Result<_>>()?;
        Ok(Locked {
            jobs,
            changed: Vec::new(),
        })
    }

    /// Applies `apply` to job `id` as changed so far: the changed job, or why not (then the
    /// job stays as it was).
    pub(crate) fn apply(
        &mut self,
        id: JobId,
        apply: impl FnOnce(&mut Job) -> Result<()>,
    ) -> Result<Job> {
        let job = self.jobs.get_mut(&id.0).ok_or(Error::JobNotFound(id))?;
        let mut changed = job.clone();
        apply(&mut changed)?;
        *job = changed.clone();
        self.changed.push(id.0);
        Ok(changed)
    }

    /// The changed jobs, each once, to write back.
    pub(crate) fn into_writes(mut self) -> Vec<Job> {
        self.changed
            .iter()
            .filter_map(|id| self.jobs.remove(id))
            .collect()
    }
}
