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

/// How a parent treats a child's end, and follows its progress.
#[derive(Debug, Clone, Default)]
pub struct ChildOptions {
    /// A failed child is an outcome, not an error of the parent.
    pub survive_failure: bool,
    /// A cancelled child is an outcome, not an error of the parent.
    pub survive_cancel: bool,
    /// How the parent's progress follows the children's (default: it does not).
    pub progress: ChildProgress,
}

impl ChildOptions {
    /// Sets how the parent's progress follows the children's.
    pub fn progress(mut self, progress: ChildProgress) -> Self {
        self.progress = progress;
        self
    }
}

/// Told the children's progress; see [`ChildProgress::Callback`].
pub type ProgressCallback = Arc<dyn Fn(&[tlo_core::Progress]) + Send + Sync>;

/// How a parent's progress follows its children's while it waits for them.
///
/// ```
/// use tlo::ChildProgress;
/// // The second of four steps run one after another moves the parent from 25% to 50%.
/// assert_eq!(ChildProgress::sequential(1, 4).map(50.0), Some(37.5));
/// assert_eq!(ChildProgress::mapped(10.0, 20.0).map(100.0), Some(20.0));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ChildProgress {
    /// The parent's progress is its own business.
    #[default]
    Ignore,
    /// The parent goes from `from` to `to` percent as the child goes from 0 to 100 (the
    /// child's message becomes the parent's). For `run_child`.
    Mapped {
        /// The parent's percent when the child starts.
        from: f64,
        /// The parent's percent when the child is done.
        to: f64,
    },
    /// The parent's percent is the mean of its group's children (an ended child counts as
    /// 100, one not started yet as 0). For `parallel_group`.
    Average,
    /// Called with the child's progress whenever it changes (`run_child`), or with every
    /// child's of the group in start order (`parallel_group`).
    Callback(ProgressCallback),
}

impl std::fmt::Debug for ChildProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildProgress::Ignore => f.write_str("Ignore"),
            ChildProgress::Mapped { from, to } => write!(f, "Mapped({from}..{to})"),
            ChildProgress::Average => f.write_str("Average"),
            ChildProgress::Callback(_) => f.write_str("Callback"),
        }
    }
}

impl ChildProgress {
    /// The parent moves from `from` to `to` percent over the child's run.
    pub fn mapped(from: f64, to: f64) -> Self {
        ChildProgress::Mapped { from, to }
    }

    /// Step `index` (from 0) of `count` steps run one after another: the parent covers the
    /// step's equal share of 0-100.
    pub fn sequential(index: usize, count: usize) -> Self {
        let share = 100.0 / count.max(1) as f64;
        ChildProgress::Mapped {
            from: share * index as f64,
            to: share * (index + 1) as f64,
        }
    }

    /// The parent's percent for a child at `percent` (`None` unless mapped).
    pub fn map(&self, percent: f64) -> Option<f64> {
        match self {
            ChildProgress::Mapped { from, to } => {
                Some(from + (to - from) * percent.clamp(0.0, 100.0) / 100.0)
            }
            _ => None,
        }
    }

    /// The mean percent of a group's children (`percents` of the started ones, `total` in all).
    pub fn average(percents: &[f64], total: usize) -> f64 {
        percents.iter().sum::<f64>() / total.max(1) as f64
    }
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
    pub(crate) fn engine(&self) -> Result<Arc<Engine>> {
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
        let job = self.wait_child(&child, &options.progress).await?;
        outcome(task.name(), job, &options)
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
        let total = pending.len();
        let mut started: Vec<JobId> = Vec::with_capacity(total);
        let following = !matches!(options.progress, ChildProgress::Ignore);
        let mut ticker = tokio::time::interval(
            engine
                .settings
                .progress_flush_interval
                .max(Duration::from_millis(10)),
        );
        let mut outcomes = Vec::new();
        let mut first_error: Option<Error> = None;
        let mut cancelled = false;
        loop {
            if first_error.is_none() && !cancelled && running.len() < limit {
                let room = (limit - running.len()).min(pending.len());
                let batch: Vec<A> = pending.drain(..room).collect();
                if !batch.is_empty() {
                    let ids = self.start_children(&engine, task, batch).await?;
                    running.extend(ids.iter().copied());
                    started.extend(ids);
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
                _ = ticker.tick(), if following => {
                    let filter = tlo_core::JobFilter::default().parent(me);
                    let mut children: tlo_core::JobIdMap<Job> = engine
                        .store
                        .list(&filter)
                        .await?
                        .into_iter()
                        .map(|job| (job.id, job))
                        .collect();
                    let progress: Vec<tlo_core::Progress> = started
                        .iter()
                        .filter_map(|id| children.remove(id))
                        .map(|job| match (&options.progress, job.state) {
                            (ChildProgress::Average, state) if state.is_end() => tlo_core::Progress {
                                percent: Some(100.0),
                                message: None,
                            },
                            _ => job.progress,
                        })
                        .collect();
                    self.follow_progress(&options.progress, &progress, total);
                }
            }
            for job in ends {
                if !running.remove(&job.id) {
                    continue; // Seen already (told directly and read from the store).
                }
                match outcome(task.name(), job, &options) {
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

    /// Waits for a child, cancelling it if the parent is cancelled, its progress followed as
    /// `follow` says. While it waits, the parent gives its worker slot back, so that waiting
    /// parents never starve their own children.
    async fn wait_child<O>(&self, child: &JobHandle<O>, follow: &ChildProgress) -> Result<Job> {
        let engine = self.engine()?;
        let _aside = SlotAside::new(&engine);
        let poll = Duration::from_millis(5);
        let mut cancelled = false;
        let mut seen = tlo_core::Progress::default();
        loop {
            let job = child.job().await?;
            if job.progress != seen {
                let mut now = job.progress.clone();
                if now.message == seen.message {
                    now.message = None; // Only a new message goes to the parent's log.
                }
                self.follow_progress(follow, std::slice::from_ref(&now), 1);
                seen = job.progress.clone();
            }
            if job.state.is_end() {
                return Ok(job);
            }
            if !cancelled && !self.should_continue() {
                cancelled = true;
                let _ = engine.cancel(child.id()).await;
            }
            tokio::select! {
                _ = self.cancelled(), if !cancelled => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Reports the parent's progress from its children's (`total` children in all).
    fn follow_progress(
        &self,
        follow: &ChildProgress,
        children: &[tlo_core::Progress],
        total: usize,
    ) {
        match follow {
            ChildProgress::Ignore => {}
            ChildProgress::Mapped { .. } => {
                if let Some(child) = children.first() {
                    let percent = child.percent.and_then(|p| follow.map(p));
                    let message = child.message.clone().unwrap_or_default();
                    if percent.is_some() || !message.is_empty() {
                        self.report_progress(percent, message);
                    }
                }
            }
            ChildProgress::Average => {
                let percents: Vec<f64> =
                    children.iter().map(|p| p.percent.unwrap_or(0.0)).collect();
                self.report_progress(Some(ChildProgress::average(&percents, total)), "");
            }
            ChildProgress::Callback(callback) => callback(children),
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
    options: &ChildOptions,
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
