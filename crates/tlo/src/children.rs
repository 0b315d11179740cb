//! Child jobs: a handler runs other tasks as children (optio's `run_child` and
//! `parallel_group`), forming a tree (parent, root, depth, order) that the store keeps.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tlo_core::{Error, Job, JobId, JobState, Result};

use crate::context::TaskContext;
use crate::engine::{Engine, SubmitOptions};
use crate::handle::JobHandle;
use crate::task::TaskRef;

/// How a parent treats a child's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildOptions {
    /// A failed child is an outcome, not an error of the parent.
    pub survive_failure: bool,
    /// A cancelled child is an outcome, not an error of the parent.
    pub survive_cancel: bool,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildOutcome<O> {
    /// The child job.
    pub job: JobId,
    /// Its end state.
    pub state: JobState,
    /// Its result, when `done`.
    pub result: Option<O>,
    /// Its error, otherwise.
    pub error: Option<String>,
}

impl TaskContext {
    fn engine(&self) -> Result<Arc<Engine>> {
        self.inner.shared.engine.upgrade().ok_or(Error::Shutdown)
    }

    /// Starts a child of `task`: same tree, one level deeper, the parent's metadata inherited.
    pub async fn start_child<A: Serialize, O>(
        &self,
        task: &TaskRef<A, O>,
        args: A,
    ) -> Result<JobHandle<O>> {
        let engine = self.engine()?;
        let id = self.start_children(&engine, task, vec![args]).await?[0];
        Ok(JobHandle::new(engine, id, true))
    }

    /// Starts children of `task` in one store write; their ids in order.
    async fn start_children<A: Serialize, O>(
        &self,
        engine: &Arc<Engine>,
        task: &TaskRef<A, O>,
        args: Vec<A>,
    ) -> Result<Vec<JobId>> {
        let def = engine.registry.require(task.name())?;
        let parent = self.job();
        let children = args
            .into_iter()
            .map(|args| {
                let mut options = SubmitOptions::new();
                options.metadata = parent.metadata.clone();
                let mut new = engine.prepare(&def, serde_json::to_value(args)?, options, true)?;
                new.parent = Some(parent.id);
                new.root = parent.root;
                new.depth = parent.depth + 1;
                new.order = self.inner.children.fetch_add(1, Ordering::AcqRel);
                Ok(new)
            })
            .collect::<Result<Vec<_>>>()?;
        let ids = children.iter().map(|child| child.id).collect();
        engine.enqueue(children).await?;
        Ok(ids)
    }

    /// Runs a child to its end and returns its result. A failed (or cancelled) child is an
    /// error naming it unless `options` says to survive it; cancelling the parent cancels the
    /// child.
    pub async fn run_child<A: Serialize, O: DeserializeOwned>(
        &self,
        task: &TaskRef<A, O>,
        args: A,
        options: ChildOptions,
    ) -> Result<ChildOutcome<O>> {
        let child = self.start_child(task, args).await?;
        let job = self.wait_child(&child).await?;
        outcome(task.name(), job, options)
    }

    /// Runs children with at most `max_concurrency` at once; outcomes come in completion order.
    /// Unless `options` says to survive, the first failure cancels the siblings still running,
    /// and the parent gets an error naming the failed child once all have ended.
    ///
    /// Children that end on this orchestrator are reported to the group directly; the store is
    /// read now and then for those that end elsewhere (other processes, cancels).
    pub async fn parallel_group<A: Serialize, O: DeserializeOwned>(
        &self,
        max_concurrency: usize,
        task: &TaskRef<A, O>,
        args: impl IntoIterator<Item = A>,
        options: ChildOptions,
    ) -> Result<Vec<ChildOutcome<O>>> {
        let engine = self.engine()?;
        let me = self.job().id;
        let (ends, mut ended) = tokio::sync::mpsc::unbounded_channel();
        let listener = EndListener::register(&engine, me, ends);
        let _aside = SlotAside::new(&engine);
        let poll = if listener.is_some() {
            engine
                .settings
                .poll_interval
                .min(Duration::from_millis(200))
        } else {
            Duration::from_millis(5)
        };
        let limit = max_concurrency.max(1);
        let mut pending: std::collections::VecDeque<A> = args.into_iter().collect();
        let mut running = tlo_core::JobIdSet::default();
        let mut outcomes = Vec::new();
        let mut first_error: Option<Error> = None;
        let mut cancelled = false;
        loop {
            if first_error.is_none() && !cancelled && running.len() < limit {
                let room = (limit - running.len()).min(pending.len());
                let batch: Vec<A> = pending.drain(..room).collect();
                if !batch.is_empty() {
                    running.extend(self.start_children(&engine, task, batch).await?);
                }
            }
            if running.is_empty() {
                break;
            }
            let mut ends: Vec<Job> = Vec::new();
            tokio::select! {
                Some(job) = ended.recv() => {
                    ends.push(job);
                    while let Ok(job) = ended.try_recv() {
                        ends.push(job);
                    }
                }
                _ = tokio::time::sleep(poll) => {
                    let filter = tlo_core::JobFilter::default().parent(me);
                    ends = engine.store.list(&filter).await?;
                    ends.retain(|job| job.state.is_end() && running.contains(&job.id));
                    ends.sort_by_key(|job| job.finished_at);
                }
                _ = self.cancelled(), if !cancelled => {
                    cancelled = true;
                    for child in &running {
                        let _ = engine.cancel(*child).await;
                    }
                }
            }
            for job in ends {
                if !running.remove(&job.id) {
                    continue; // Seen already (told directly and read from the store).
                }
                match outcome(task.name(), job, options) {
                    Ok(done) => outcomes.push(done),
                    Err(err) => {
                        if first_error.is_none() {
                            for sibling in &running {
                                let _ = engine.cancel(*sibling).await;
                            }
                        }
                        first_error.get_or_insert(err);
                    }
                }
            }
        }
        drop(listener);
        match first_error {
            Some(err) => Err(err),
            // Cancelled before every child could start: the group is not complete.
            None if cancelled && !pending.is_empty() => Err(Error::JobCancelled(me)),
            None => Ok(outcomes),
        }
    }

    /// Waits for a child, cancelling it if the parent is cancelled. While it waits, the parent
    /// gives its worker slot back, so that waiting parents never starve their own children.
    async fn wait_child<O>(&self, child: &JobHandle<O>) -> Result<Job> {
        let (_, job) = self.wait_any(std::slice::from_ref(child)).await?;
        Ok(job)
    }

    async fn wait_any<O>(&self, children: &[JobHandle<O>]) -> Result<(usize, Job)> {
        let engine = self.engine()?;
        let _aside = SlotAside::new(&engine);
        let poll = std::time::Duration::from_millis(5);
        let mut cancelled = false;
        loop {
            // Of the children that ended, the first to end: outcomes in completion order.
            let mut first: Option<(usize, Job)> = None;
            for (index, child) in children.iter().enumerate() {
                let job = child.job().await?;
                if job.state.is_end()
                    && first
                        .as_ref()
                        .is_none_or(|(_, f)| job.finished_at < f.finished_at)
                {
                    first = Some((index, job));
                }
            }
            if let Some(first) = first {
                return Ok(first);
            }
            if !cancelled && !self.should_continue() {
                cancelled = true;
                for child in children {
                    let _ = engine.cancel(child.id()).await;
                }
            }
            tokio::select! {
                _ = self.cancelled(), if !cancelled => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// A parent told of its children's ends directly by the runners of this orchestrator, while
/// it waits on a group; `None` when something else listens for that parent already.
struct EndListener {
    engine: Arc<Engine>,
    parent: JobId,
}

impl EndListener {
    fn register(
        engine: &Arc<Engine>,
        parent: JobId,
        ends: tokio::sync::mpsc::UnboundedSender<Job>,
    ) -> Option<Self> {
        let mut coordinators = engine.coordinators.lock();
        if coordinators.contains_key(&parent) {
            return None;
        }
        coordinators.insert(parent, ends);
        Some(EndListener {
            engine: engine.clone(),
            parent,
        })
    }
}

impl Drop for EndListener {
    fn drop(&mut self) {
        self.engine.coordinators.lock().remove(&self.parent);
    }
}

/// A parent's slot, given back while it waits and taken again after.
struct SlotAside {
    engine: Arc<Engine>,
}

impl SlotAside {
    fn new(engine: &Arc<Engine>) -> Self {
        engine.side_jobs.fetch_add(1, Ordering::AcqRel);
        engine.release_slot();
        SlotAside {
            engine: engine.clone(),
        }
    }
}

impl Drop for SlotAside {
    fn drop(&mut self) {
        // Back in its slot (briefly above the limit if the slot was taken meanwhile).
        self.engine.in_flight.fetch_add(1, Ordering::AcqRel);
        self.engine.side_jobs.fetch_sub(1, Ordering::AcqRel);
    }
}

fn outcome<O: DeserializeOwned>(
    task: &str,
    job: Job,
    options: ChildOptions,
) -> Result<ChildOutcome<O>> {
    let survive = match job.state {
        JobState::Done => true,
        JobState::Cancelled => options.survive_cancel,
        _ => options.survive_failure,
    };
    if !survive {
        return Err(Error::JobFailed {
            job: job.id,
            error: format!(
                "child `{task}` {}: {}",
                job.state,
                job.error.as_deref().unwrap_or("-")
            ),
        });
    }
    let result = match (&job.state, job.result) {
        (JobState::Done, Some(value)) => Some(serde_json::from_value(value)?),
        _ => None,
    };
    Ok(ChildOutcome {
        job: job.id,
        state: job.state,
        result,
        error: job.error,
    })
}
