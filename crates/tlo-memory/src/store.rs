//! `MemoryStore`: every job in one process's memory, behind one lock.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use parking_lot::Mutex;
use tlo_core::transition::{
    Change, apply_acknowledge_cancel, apply_cancel_request, apply_change, apply_claim,
    apply_completion, apply_progress, apply_relaunch, apply_rescue, check_prunable,
};
use tlo_core::{
    CancelOutcome, ClaimRequest, Completion, DateTime, Enqueued, Error, Job, JobFilter, JobId,
    JobIdMap, JobIdSet, JobState, LogEntry, NewJob, Progress, Result, Store, Utc, async_trait,
};

/// A store that keeps jobs in memory: fast, simple, gone when the process exits.
///
/// Use it for tests and prototypes; it is the default until a durable store is configured.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use tlo_core::{NewJob, Store};
/// let store = tlo_memory::MemoryStore::new();
/// let ids = store.enqueue(vec![NewJob::new("greet", serde_json::json!({"name": "Ada"}))]).await?;
/// assert!(store.get(ids[0].id).await?.is_some());
/// # Ok::<(), tlo_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[derive(Debug, Default)]
struct Inner {
    jobs: JobIdMap<Entry>,
    queues: HashMap<String, QueueIndex>,
    unique: HashMap<String, JobId>,
    executing: JobIdSet,
    logs: JobIdMap<Vec<LogEntry>>,
    slots: HashMap<String, DateTime<Utc>>,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    job: Job,
    /// Submission order, for ties.
    seq: u64,
    /// Bumped on every re-index, so older heap entries are recognised as stale.
    generation: u32,
}

/// A job's place in a queue's heaps; stale when the job's generation moved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    priority: i32,
    eta_us: i64,
    seq: u64,
    generation: u32,
    id: JobId,
}

/// Ready order: highest priority, then earliest eta, then earliest submission.
#[derive(Debug, PartialEq, Eq)]
struct Ready(Key);

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .priority
            .cmp(&other.0.priority)
            .then(other.0.eta_us.cmp(&self.0.eta_us))
            .then(other.0.seq.cmp(&self.0.seq))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Delayed order: earliest eta first (wrapped in `Reverse` in the heap).
#[derive(Debug, PartialEq, Eq)]
struct Delayed(Key);

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .eta_us
            .cmp(&other.0.eta_us)
            .then(self.0.seq.cmp(&other.0.seq))
    }
}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Default)]
struct QueueIndex {
    ready: BinaryHeap<Ready>,
    delayed: BinaryHeap<Reverse<Delayed>>,
}

impl QueueIndex {
    fn promote_due(&mut self, now_us: i64) {
        while let Some(Reverse(Delayed(key))) = self.delayed.peek() {
            if key.eta_us > now_us {
                break;
            }
            let key = *key;
            self.delayed.pop();
            self.ready.push(Ready(key));
        }
    }
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

impl Inner {
    fn is_live(&self, key: &Key) -> bool {
        self.jobs.get(&key.id).is_some_and(|entry| {
            entry.generation == key.generation && entry.job.state == JobState::Scheduled
        })
    }

    /// Puts a `scheduled` job (back) into its queue's index.
    fn index(&mut self, id: JobId, now_us: i64) {
        let Some(entry) = self.jobs.get_mut(&id) else {
            return;
        };
        if entry.job.state != JobState::Scheduled {
            return;
        }
        entry.generation = entry.generation.wrapping_add(1);
        let key = Key {
            priority: entry.job.priority,
            eta_us: micros(entry.job.eta),
            seq: entry.seq,
            generation: entry.generation,
            id,
        };
        let queue = self.queues.entry(entry.job.queue.clone()).or_default();
        if key.eta_us <= now_us {
            queue.ready.push(Ready(key));
        } else {
            queue.delayed.push(Reverse(Delayed(key)));
        }
    }

    /// The best live ready key of `queue`, dropping stale heads.
    fn peek_ready(&mut self, queue: &str) -> Option<Key> {
        loop {
            let key = self.queues.get(queue)?.ready.peek()?.0;
            if self.is_live(&key) {
                return Some(key);
            }
            self.queues.get_mut(queue)?.ready.pop();
        }
    }

    fn job_mut(&mut self, id: JobId) -> Result<&mut Job> {
        self.jobs
            .get_mut(&id)
            .map(|entry| &mut entry.job)
            .ok_or(Error::JobNotFound(id))
    }

    /// Applies `change` to job `id` and re-indexes it (nothing, when refused).
    fn change(&mut self, id: JobId, change: &Change, now: DateTime<Utc>) -> Result<Job> {
        let job = self.job_mut(id)?;
        apply_change(job, change, now)?;
        let job = job.clone();
        self.index(id, micros(now));
        Ok(job)
    }

    fn track(&mut self, id: JobId) {
        let state = self.jobs.get(&id).map(|entry| entry.job.state);
        match state {
            Some(state) if state.is_executing() => {
                self.executing.insert(id);
            }
            _ => {
                self.executing.remove(&id);
            }
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let now = Utc::now();
        let now_us = micros(now);
        let mut inner = self.inner.lock();
        let mut out = Vec::with_capacity(jobs.len());
        for new in jobs {
            if let Some(key) = &new.unique_key {
                if let Some(&existing) = inner.unique.get(key) {
                    out.push(Enqueued {
                        id: existing,
                        inserted: false,
                    });
                    continue;
                }
                inner.unique.insert(key.clone(), new.id);
            }
            let id = new.id;
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let entry = Entry {
                job: new.into_job(now),
                seq,
                generation: 0,
            };
            inner.jobs.insert(id, entry);
            inner.index(id, now_us);
            out.push(Enqueued { id, inserted: true });
        }
        Ok(out)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Job>> {
        let now_us = micros(request.now);
        let mut inner = self.inner.lock();
        let mut caps: Vec<(&str, usize)> = Vec::with_capacity(request.queues.len());
        for demand in &request.queues {
            if demand.limit > 0 {
                if let Some(index) = inner.queues.get_mut(&demand.queue) {
                    index.promote_due(now_us);
                    caps.push((&demand.queue, demand.limit));
                }
            }
        }
        let mut claimed = Vec::new();
        while claimed.len() < request.limit {
            let mut best: Option<(usize, Key)> = None;
            for (slot, (queue, cap)) in caps.iter().enumerate() {
                if *cap == 0 {
                    continue;
                }
                if let Some(key) = inner.peek_ready(queue) {
                    if best.is_none_or(|(_, b)| Ready(key) > Ready(b)) {
                        best = Some((slot, key));
                    }
                }
            }
            let Some((slot, key)) = best else { break };
            caps[slot].1 -= 1;
            if let Some(index) = inner.queues.get_mut(caps[slot].0) {
                index.ready.pop();
            }
            let job = inner.job_mut(key.id)?;
            apply_claim(job, &request.worker, request.now, request.lease)?;
            let job = job.clone();
            inner.executing.insert(key.id);
            claimed.push(job);
        }
        Ok(claimed)
    }

    async fn complete(&self, completion: Completion) -> Result<Job> {
        let mut inner = self.inner.lock();
        let job = inner.job_mut(completion.id)?;
        apply_completion(job, &completion)?;
        let job = job.clone();
        inner.track(completion.id);
        if job.state == JobState::Scheduled {
            inner.index(completion.id, micros(Utc::now()));
        }
        Ok(job)
    }

    async fn complete_many(&self, completions: Vec<Completion>) -> Result<Vec<Result<Job>>> {
        let now_us = micros(Utc::now());
        let mut inner = self.inner.lock();
        Ok(completions
            .into_iter()
            .map(|completion| {
                let job = inner.job_mut(completion.id)?;
                apply_completion(job, &completion)?;
                let job = job.clone();
                inner.track(completion.id);
                if job.state == JobState::Scheduled {
                    inner.index(completion.id, now_us);
                }
                Ok(job)
            })
            .collect())
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome> {
        let mut inner = self.inner.lock();
        let job = inner.job_mut(id)?;
        apply_cancel_request(job, Utc::now())
    }

    async fn change(&self, id: JobId, change: Change) -> Result<Job> {
        self.inner.lock().change(id, &change, Utc::now())
    }

    async fn change_many(&self, changes: Vec<(JobId, Change)>) -> Result<Vec<Result<Job>>> {
        let now = Utc::now();
        let mut inner = self.inner.lock();
        Ok(changes
            .into_iter()
            .map(|(id, change)| inner.change(id, &change, now))
            .collect())
    }

    async fn relaunch(&self, id: JobId, eta: DateTime<Utc>) -> Result<Job> {
        let mut inner = self.inner.lock();
        let job = inner.job_mut(id)?;
        apply_relaunch(job, eta)?;
        let job = job.clone();
        inner.index(id, micros(Utc::now()));
        Ok(job)
    }

    async fn acknowledge_cancel(&self, id: JobId, attempt: u32) -> Result<()> {
        let mut inner = self.inner.lock();
        apply_acknowledge_cancel(inner.job_mut(id)?, attempt)
    }

    async fn renew_leases(
        &self,
        worker: &str,
        jobs: &[(JobId, u32)],
        until: DateTime<Utc>,
    ) -> Result<Vec<(JobId, JobState)>> {
        let mut inner = self.inner.lock();
        let mut out = Vec::with_capacity(jobs.len());
        for &(id, attempt) in jobs {
            if let Some(entry) = inner.jobs.get_mut(&id) {
                let job = &mut entry.job;
                if job.attempt == attempt
                    && job.state.is_executing()
                    && job.worker.as_deref() == Some(worker)
                {
                    job.lease_until = Some(until);
                    out.push((id, job.state));
                }
            }
        }
        Ok(out)
    }

    async fn rescue_expired(&self, now: DateTime<Utc>) -> Result<Vec<Job>> {
        let mut inner = self.inner.lock();
        let expired: Vec<JobId> = inner
            .executing
            .iter()
            .copied()
            .filter(|id| {
                inner.jobs[id]
                    .job
                    .lease_until
                    .is_some_and(|lease| lease < now)
            })
            .collect();
        let mut rescued = Vec::with_capacity(expired.len());
        for id in expired {
            let job = inner.job_mut(id)?;
            apply_rescue(job, now);
            rescued.push(job.clone());
            inner.track(id);
            inner.index(id, micros(now));
        }
        Ok(rescued)
    }

    async fn set_progress(&self, id: JobId, attempt: u32, progress: Progress) -> Result<()> {
        let mut inner = self.inner.lock();
        apply_progress(inner.job_mut(id)?, attempt, progress)
    }

    async fn append_logs(&self, id: JobId, entries: Vec<LogEntry>) -> Result<()> {
        let mut inner = self.inner.lock();
        if !inner.jobs.contains_key(&id) {
            return Err(Error::JobNotFound(id));
        }
        inner.logs.entry(id).or_default().extend(entries);
        Ok(())
    }

    async fn logs(&self, id: JobId) -> Result<Vec<LogEntry>> {
        let inner = self.inner.lock();
        if !inner.jobs.contains_key(&id) {
            return Err(Error::JobNotFound(id));
        }
        Ok(inner.logs.get(&id).cloned().unwrap_or_default())
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self
            .inner
            .lock()
            .jobs
            .get(&id)
            .map(|entry| entry.job.clone()))
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let inner = self.inner.lock();
        let mut jobs: Vec<Job> = inner
            .jobs
            .values()
            .filter(|entry| filter.matches(&entry.job))
            .map(|entry| entry.job.clone())
            .collect();
        drop(inner);
        jobs.sort_by_key(|job| (job.depth, job.order, job.id));
        if let Some(limit) = filter.limit {
            jobs.truncate(limit);
        }
        Ok(jobs)
    }

    async fn count_due(&self, queues: &[String], before: DateTime<Utc>) -> Result<usize> {
        let inner = self.inner.lock();
        Ok(inner
            .jobs
            .values()
            .filter(|entry| {
                entry.job.state == JobState::Scheduled
                    && entry.job.eta <= before
                    && queues.contains(&entry.job.queue)
            })
            .count())
    }

    async fn next_eta(&self, queues: &[String]) -> Result<Option<DateTime<Utc>>> {
        let mut inner = self.inner.lock();
        let mut earliest: Option<i64> = None;
        for queue in queues {
            if let Some(key) = inner.peek_ready(queue) {
                earliest = Some(earliest.map_or(key.eta_us, |e| e.min(key.eta_us)));
            }
            // Delayed heads may be stale; drop them until a live one shows.
            while let Some(Reverse(Delayed(key))) = inner
                .queues
                .get(queue.as_str())
                .and_then(|index| index.delayed.peek())
            {
                let key = *key;
                if inner.is_live(&key) {
                    earliest = Some(earliest.map_or(key.eta_us, |e| e.min(key.eta_us)));
                    break;
                }
                if let Some(index) = inner.queues.get_mut(queue.as_str()) {
                    index.delayed.pop();
                }
            }
        }
        Ok(earliest.and_then(DateTime::from_timestamp_micros))
    }

    async fn cancel_scheduled(&self, queues: &[String]) -> Result<usize> {
        let now = Utc::now();
        let mut inner = self.inner.lock();
        let mut cancelled = 0;
        for entry in inner.jobs.values_mut() {
            if entry.job.state == JobState::Scheduled && queues.contains(&entry.job.queue) {
                apply_cancel_request(&mut entry.job, now)?;
                cancelled += 1;
            }
        }
        Ok(cancelled)
    }

    async fn prune(&self, state: JobState, before: DateTime<Utc>, limit: usize) -> Result<usize> {
        check_prunable(state)?;
        let mut inner = self.inner.lock();
        let doomed: Vec<JobId> = inner
            .jobs
            .values()
            .filter(|e| e.job.state == state && e.job.finished_at.is_some_and(|at| at < before))
            .filter(|e| {
                e.job
                    .unique_key
                    .as_deref()
                    .is_none_or(|key| !key.starts_with(tlo_core::PROCESS_KEY_PREFIX))
            })
            // A node of a tree whose root is still active stays (a running workflow may still
            // read its upstream results); it goes once the root has ended or is gone.
            .filter(|e| {
                e.job.root == e.job.id
                    || inner
                        .jobs
                        .get(&e.job.root)
                        .is_none_or(|root| !root.job.state.is_active())
            })
            .map(|e| e.job.id)
            .take(limit)
            .collect();
        for id in &doomed {
            if let Some(entry) = inner.jobs.remove(id) {
                if let Some(key) = entry.job.unique_key {
                    if inner.unique.get(&key) == Some(id) {
                        inner.unique.remove(&key);
                    }
                }
            }
            inner.logs.remove(id);
        }
        Ok(doomed.len())
    }

    async fn delete(&self, ids: &[JobId]) -> Result<usize> {
        let mut inner = self.inner.lock();
        for id in ids {
            if let Some(entry) = inner.jobs.get(id) {
                if entry.job.state.is_active() {
                    return Err(Error::ActiveJob {
                        job: *id,
                        state: entry.job.state,
                    });
                }
            }
        }
        let mut deleted = 0;
        for id in ids {
            if let Some(entry) = inner.jobs.remove(id) {
                deleted += 1;
                if let Some(key) = entry.job.unique_key {
                    if inner.unique.get(&key) == Some(id) {
                        inner.unique.remove(&key);
                    }
                }
            }
            inner.logs.remove(id);
        }
        Ok(deleted)
    }

    async fn clear_logs(&self, id: JobId) -> Result<()> {
        let mut inner = self.inner.lock();
        if !inner.jobs.contains_key(&id) {
            return Err(Error::JobNotFound(id));
        }
        inner.logs.remove(&id);
        Ok(())
    }

    async fn claim_schedule_slot(&self, schedule: &str, slot: DateTime<Utc>) -> Result<bool> {
        let mut inner = self.inner.lock();
        match inner.slots.get(schedule) {
            Some(&last) if last >= slot => Ok(false),
            _ => {
                inner.slots.insert(schedule.to_owned(), slot);
                Ok(true)
            }
        }
    }

    async fn last_schedule_slot(&self, schedule: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.inner.lock().slots.get(schedule).copied())
    }
}
