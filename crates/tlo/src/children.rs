//! Child jobs: a handler runs other tasks as children (optio's `run_child` and
//! `parallel_group`), forming a tree (parent, root, depth, order) that the store keeps.

use std::sync::Arc;
use std::sync::atomic::Ordering;

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
        let def = engine.registry.require(task.name())?;
        let parent = self.job();
        let mut options = SubmitOptions::new();
        options.metadata = parent.metadata.clone();
        let mut new = engine.prepare(&def, serde_json::to_value(args)?, options, true)?;
        new.parent = Some(parent.id);
        new.root = parent.root;
        new.depth = parent.depth + 1;
        new.order = self.inner.children.fetch_add(1, Ordering::AcqRel);
        let id = new.id;
        engine.enqueue(vec![new]).await?;
        Ok(JobHandle::new(engine, id, true))
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
    pub async fn parallel_group<A: Serialize, O: DeserializeOwned>(
        &self,
        max_concurrency: usize,
        task: &TaskRef<A, O>,
        args: impl IntoIterator<Item = A>,
        options: ChildOptions,
    ) -> Result<Vec<ChildOutcome<O>>> {
        let mut pending: std::collections::VecDeque<A> = args.into_iter().collect();
        let mut running: Vec<JobHandle<O>> = Vec::new();
        let mut outcomes = Vec::new();
        let mut first_error: Option<Error> = None;
        loop {
            while first_error.is_none() && running.len() < max_concurrency.max(1) {
                let Some(args) = pending.pop_front() else {
                    break;
                };
                running.push(self.start_child(task, args).await?);
            }
            if running.is_empty() {
                break;
            }
            let (index, job) = self.wait_any(&running).await?;
            running.swap_remove(index);
            match outcome(task.name(), job, options) {
                Ok(done) => outcomes.push(done),
                Err(err) => {
                    if first_error.is_none() {
                        let engine = self.engine()?;
                        for sibling in &running {
                            let _ = engine.cancel(sibling.id()).await;
                        }
                    }
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
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
