//! Processes (optio): long-lived jobs with a user-chosen id, defined once, then launched,
//! cancelled and dismissed by that id, each control returning a typed outcome.
//!
//! A process is an ordinary job: its id is derived from its name
//! ([`JobId::for_process`]), it waits in `idle` until launched, and a launch moves it to
//! `scheduled` for any worker to run. So it is as durable as any job on every store.

mod blocks;
mod schedules;

use serde_json::{Map, Value};
use tlo_core::{CancelOutcome, Error, Job, JobId, JobState};

use crate::engine::{Engine, SubmitOptions};
use crate::schedule::Schedule;
use crate::tlo::Tlo;

pub(crate) use blocks::LaunchBlocks;
pub use blocks::{LAUNCH_BLOCK_TASK, LaunchBlock};
pub(crate) use schedules::tick as tick_schedules;

/// The metadata key under which a process keeps its descriptive fields.
pub const PROCESS_METADATA_KEY: &str = "process";

/// A process to create: which task runs it, with which parameters, and how it is shown.
///
/// ```
/// let def = tlo::ProcessDefinition::new("nightly-report", "report")
///     .name("Nightly report")
///     .params(serde_json::json!({"day": "yesterday"}))
///     .metadata("team", "billing");
/// assert_eq!(def.id, "nightly-report");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProcessDefinition {
    /// The unique, user-chosen id.
    pub id: String,
    /// The registered task that runs it.
    pub task: String,
    /// A human name (default: the id).
    pub name: Option<String>,
    /// What it does.
    pub description: Option<String>,
    /// The task's arguments.
    pub params: Value,
    /// Metadata: filters, launch blocks and children see it.
    pub metadata: Map<String, Value>,
    /// Whether a running launch may be cancelled (default true).
    pub cancellable: bool,
    /// A caution shown to operators before launching it.
    pub warning: Option<String>,
    /// Marks a process for special treatment in listings (optio's `special`).
    pub special: bool,
    /// Deleted with its children once a run ends.
    pub ephemeral: bool,
    /// Launched at each slot by the scheduler of every orchestrator that defined (or resynced)
    /// it; a slot is taken once across all of them, and skipped while a run is still active or
    /// a launch block matches.
    pub schedule: Option<Schedule>,
}

impl ProcessDefinition {
    /// A process `id` run by `task`, with `{}` as parameters.
    pub fn new(id: impl Into<String>, task: impl Into<String>) -> Self {
        ProcessDefinition {
            id: id.into(),
            task: task.into(),
            name: None,
            description: None,
            params: Value::Object(Map::new()),
            metadata: Map::new(),
            cancellable: true,
            warning: None,
            special: false,
            ephemeral: false,
            schedule: None,
        }
    }
    /// Sets the human name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
    /// Sets the task's arguments.
    pub fn params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }
    /// Adds one metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Sets whether a running launch may be cancelled.
    pub fn cancellable(mut self, cancellable: bool) -> Self {
        self.cancellable = cancellable;
        self
    }
    /// Sets the operator warning.
    pub fn warning(mut self, warning: impl Into<String>) -> Self {
        self.warning = Some(warning.into());
        self
    }
    /// Marks the process special.
    pub fn special(mut self, special: bool) -> Self {
        self.special = special;
        self
    }
    /// An ephemeral process is deleted, with its children, once a run of it ends.
    pub fn ephemeral(mut self, ephemeral: bool) -> Self {
        self.ephemeral = ephemeral;
        self
    }
    /// Launches the process at each slot of `schedule` (optio's cron `schedule`).
    ///
    /// ```
    /// let def = tlo::ProcessDefinition::new("nightly-report", "report")
    ///     .schedule(tlo::Schedule::cron("0 2 * * *").unwrap());
    /// assert!(def.schedule.is_some());
    /// ```
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    fn descriptor(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name.clone().unwrap_or_else(|| self.id.clone()),
            "description": self.description,
            "warning": self.warning,
            "special": self.special,
            "ephemeral": self.ephemeral,
            "schedule": self.schedule.as_ref().map(Schedule::describe),
        })
    }
}

/// Why a process control was refused; each reason has a stable kebab-case
/// [`code`](ControlError::code) for the CLI and HTTP clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No process has this id.
    #[error("not-found: no process {0:?}")]
    NotFound(String),
    /// It is already scheduled or running.
    #[error("not-launchable: process {id:?} is {state}")]
    NotLaunchable {
        /// The process id.
        id: String,
        /// Its state now.
        state: JobState,
    },
    /// A launch block matches its metadata.
    #[error("launch-blocked: process {id:?}: {reason}")]
    LaunchBlocked {
        /// The process id.
        id: String,
        /// The block's reason (the first matching block's, when several match).
        reason: String,
    },
    /// It is not running, or it runs but was defined not cancellable.
    #[error("not-cancellable: process {id:?} is {state}")]
    NotCancellable {
        /// The process id.
        id: String,
        /// Its state now.
        state: JobState,
    },
    /// It has not ended (only an ended process goes back to idle).
    #[error("not-dismissable: process {id:?} is {state}")]
    NotDismissable {
        /// The process id.
        id: String,
        /// Its state now.
        state: JobState,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl ControlError {
    /// The reason as a stable code: `not-found`, `not-launchable`, `launch-blocked`,
    /// `not-cancellable`, `not-dismissable` or `store`.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::NotFound(_) => "not-found",
            ControlError::NotLaunchable { .. } => "not-launchable",
            ControlError::LaunchBlocked { .. } => "launch-blocked",
            ControlError::NotCancellable { .. } => "not-cancellable",
            ControlError::NotDismissable { .. } => "not-dismissable",
            ControlError::Store(_) => "store",
        }
    }
}

/// What [`Tlo::resync`] did, by process id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResyncReport {
    /// Processes created (idle).
    pub created: Vec<String>,
    /// Existing processes whose definition changed (their run state untouched).
    pub updated: Vec<String>,
    /// Processes no longer defined: cancelled if active, then deleted with their children.
    pub removed: Vec<String>,
}

fn metadata_of(def: &ProcessDefinition) -> Map<String, Value> {
    let mut metadata = def.metadata.clone();
    metadata.insert(PROCESS_METADATA_KEY.into(), def.descriptor());
    metadata
}

impl Tlo {
    /// Brings the store in line with `definitions` (the definitions provider's answer): new
    /// processes are created idle, existing ones get their new parameters and metadata without
    /// touching their run state, and with `clean`, the processes matching `metadata_filter`
    /// (every key equal; empty: all) that are no longer defined are cancelled, given the
    /// cancel grace period to end, and deleted with their children.
    pub async fn resync(
        &self,
        definitions: &[ProcessDefinition],
        clean: bool,
        metadata_filter: &Map<String, Value>,
    ) -> tlo_core::Result<ResyncReport> {
        let mut report = ResyncReport::default();
        for def in definitions {
            match self.process(&def.id).await? {
                None => {
                    self.define_process(def.clone()).await?;
                    report.created.push(def.id.clone());
                }
                Some(job) => {
                    self.remember_schedule(def);
                    let wanted = self.process_job(def)?;
                    if job.args != wanted.args
                        || job.metadata != wanted.metadata
                        || job.cancellable != wanted.cancellable
                    {
                        let change = tlo_core::transition::Change::Redefine {
                            args: wanted.args,
                            metadata: wanted.metadata,
                            cancellable: wanted.cancellable,
                        };
                        self.engine().store.change(job.id, change).await?;
                        report.updated.push(def.id.clone());
                    }
                }
            }
        }
        if clean {
            let filter = tlo_core::JobFilter {
                metadata: metadata_filter.clone(),
                ..tlo_core::JobFilter::default()
            };
            let defined: std::collections::HashSet<JobId> = definitions
                .iter()
                .map(|def| JobId::for_process(&def.id))
                .collect();
            for job in self.engine().store.list(&filter).await? {
                // Plain jobs in scope (no process descriptor) are not the provider's business.
                let Some(id) = process_id(&job) else {
                    continue;
                };
                if job.parent.is_some() || defined.contains(&job.id) {
                    continue;
                }
                self.remove_process(id, &job).await?;
                report.removed.push(id.to_owned());
            }
        }
        Ok(report)
    }

    /// Cancels `job` if active, waits for it to end (a heartbeat for the cancel to reach a
    /// worker elsewhere, the cancel grace period, and two polls), then deletes it with its
    /// children.
    async fn remove_process(&self, id: &str, job: &Job) -> tlo_core::Result<()> {
        schedules::forget(self.engine(), id);
        if job.state.is_active() {
            match self.cancel(job.id).await {
                Ok(_) | Err(Error::IllegalTransition { .. }) => {}
                // Not cancellable: it may still end within the wait; if not, the delete
                // below refuses it (`Error::ActiveJob`).
                Err(Error::NotCancellable(_)) => {}
                Err(other) => return Err(other),
            }
            let settings = self.settings();
            // The heartbeat carries a cancel to a job running in another process.
            let patience =
                settings.heartbeat_interval() + settings.cancel_grace + settings.poll_interval * 2;
            self.handle::<Value>(job.id).wait_timeout(patience).await?;
        }
        delete_tree(self.engine(), job).await.map(drop)
    }

    /// Creates the process `def` in `idle` (not launched); when it exists already, returns
    /// its id and leaves it as it is.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let tlo = tlo::Tlo::builder().build()?;
    /// tlo.register("report", tlo::TaskOptions::new(), |_ctx, _: serde_json::Value| async move {
    ///     Ok::<_, String>("sent")
    /// })?;
    /// let id = tlo.define_process(tlo::ProcessDefinition::new("nightly", "report")).await?;
    /// assert_eq!(tlo.job(id).await?.state, tlo::JobState::Idle);
    /// # Ok::<(), tlo::Error>(()) }).unwrap();
    /// ```
    pub async fn define_process(&self, def: ProcessDefinition) -> tlo_core::Result<JobId> {
        let job = self.process_job(&def)?;
        let enqueued = self.engine().enqueue(vec![job]).await?;
        self.remember_schedule(&def);
        Ok(enqueued[0].id)
    }

    /// The idle job `def` stands for (its task's options and metadata applied).
    fn process_job(&self, def: &ProcessDefinition) -> tlo_core::Result<tlo_core::NewJob> {
        let engine = self.engine();
        let task = engine.registry.require(&def.task)?;
        let options = SubmitOptions {
            metadata: metadata_of(def),
            unique_key: Some(format!("{}{}", tlo_core::PROCESS_KEY_PREFIX, def.id)),
            ..SubmitOptions::default()
        };
        let mut job = engine.prepare(&task, def.params.clone(), options, false)?;
        job.id = JobId::for_process(&def.id);
        job.root = job.id;
        job.state = JobState::Idle;
        job.cancellable = def.cancellable;
        Ok(job)
    }

    /// The process `id`, if defined.
    pub async fn process(&self, id: &str) -> tlo_core::Result<Option<Job>> {
        self.engine().store.get(JobId::for_process(id)).await
    }

    async fn require_process(&self, id: &str) -> Result<Job, ControlError> {
        self.process(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))
    }

    /// Launches the process `id` (fire and forget): `idle` or ended -> `scheduled`, the
    /// previous run's result, error and progress cleared.
    pub async fn launch(&self, id: &str) -> Result<Job, ControlError> {
        let job = self.require_process(id).await?;
        if !(job.state == JobState::Idle || job.state.is_end()) {
            return Err(ControlError::NotLaunchable {
                id: id.to_owned(),
                state: job.state,
            });
        }
        let blocks = self.launch_blocks_in_force().await?;
        if let Some(block) = blocks
            .iter()
            .find(|block| job.metadata_matches(&block.filter))
        {
            return Err(ControlError::LaunchBlocked {
                id: id.to_owned(),
                reason: block.reason.clone(),
            });
        }
        if job.state.is_end() {
            self.forget_previous_run(&job).await?;
        }
        self.retry(job.id).await.map_err(|err| match err {
            // Another launcher won the race.
            Error::IllegalTransition { from, .. } => ControlError::NotLaunchable {
                id: id.to_owned(),
                state: from,
            },
            other => ControlError::Store(other),
        })
    }

    /// Launches the process `id` and waits for the run to end; returns the ended job
    /// (which may have failed or been cancelled: see its state).
    pub async fn launch_and_wait(&self, id: &str) -> Result<Job, ControlError> {
        let job = self.launch(id).await?;
        Ok(self.handle::<Value>(job.id).wait().await?)
    }

    /// Cancels the running (or scheduled) launch of process `id`.
    pub async fn cancel_process(&self, id: &str) -> Result<CancelOutcome, ControlError> {
        let job = self.require_process(id).await?;
        let refused = || ControlError::NotCancellable {
            id: id.to_owned(),
            state: job.state,
        };
        if !job.state.is_active() || (job.state.is_executing() && !job.cancellable) {
            return Err(refused());
        }
        match self.cancel(job.id).await {
            Ok(outcome) => Ok(outcome),
            Err(Error::NotCancellable(_) | Error::IllegalTransition { .. }) => Err(refused()),
            Err(other) => Err(ControlError::Store(other)),
        }
    }

    /// Puts the ended process `id` back to `idle`, clearing its result, error and progress.
    pub async fn dismiss(&self, id: &str) -> Result<Job, ControlError> {
        let job = self.require_process(id).await?;
        let refused = |state| ControlError::NotDismissable {
            id: id.to_owned(),
            state,
        };
        if !job.state.is_end() {
            return Err(refused(job.state));
        }
        match self
            .engine()
            .store
            .change(job.id, tlo_core::transition::Change::Dismiss)
            .await
        {
            Ok(idle) => {
                self.forget_previous_run(&idle).await?;
                Ok(idle)
            }
            Err(Error::IllegalTransition { from, .. }) => Err(refused(from)),
            Err(other) => Err(ControlError::Store(other)),
        }
    }

    /// Deletes the idle or ended process `id` with its children and log.
    pub async fn delete_process(&self, id: &str) -> Result<usize, ControlError> {
        let job = self.require_process(id).await?;
        match delete_tree(self.engine(), &job).await {
            Ok(deleted) => {
                schedules::forget(self.engine(), id);
                Ok(deleted)
            }
            Err(Error::ActiveJob { state, .. }) => Err(ControlError::NotDismissable {
                id: id.to_owned(),
                state,
            }),
            Err(other) => Err(ControlError::Store(other)),
        }
    }

    /// The job `id` and every job below it (children, their children, ...), parents before
    /// children, siblings in order: what `tlo tree` shows.
    pub async fn tree(&self, id: JobId) -> tlo_core::Result<Vec<Job>> {
        let job = self.job(id).await?;
        let mut tree = subtree(self.engine(), &job).await?;
        tree.insert(0, job);
        Ok(tree)
    }

    /// Clears what the last run left: its children and its log.
    async fn forget_previous_run(&self, job: &Job) -> tlo_core::Result<()> {
        let children: Vec<JobId> = subtree(self.engine(), job)
            .await?
            .iter()
            .map(|child| child.id)
            .collect();
        let store = &self.engine().store;
        if !children.is_empty() {
            store.delete(&children).await?;
        }
        store.clear_logs(job.id).await
    }
}

/// Every job below `job` in its tree, in the store's order (depth, order, id).
async fn subtree(engine: &Engine, job: &Job) -> tlo_core::Result<Vec<Job>> {
    let tree = engine
        .store
        .list(&tlo_core::JobFilter::default().root(job.root))
        .await?;
    // Sorted by depth: a parent is always seen before its children.
    let mut below = tlo_core::JobIdSet::default();
    below.insert(job.id);
    Ok(tree
        .into_iter()
        .filter(|member| {
            let keep = member.parent.is_some_and(|p| below.contains(&p));
            if keep {
                below.insert(member.id);
            }
            keep
        })
        .collect())
}

/// Deletes `job` with every job below it; refused (nothing deleted) while one is active.
async fn delete_tree(engine: &Engine, job: &Job) -> tlo_core::Result<usize> {
    let mut ids: Vec<JobId> = subtree(engine, job).await?.iter().map(|j| j.id).collect();
    ids.push(job.id);
    engine.store.delete(&ids).await
}

/// The user's id of process `job`; `None` for any other job.
fn process_id(job: &Job) -> Option<&str> {
    job.metadata.get(PROCESS_METADATA_KEY)?.get("id")?.as_str()
}

/// Whether `job` is a top-level process marked ephemeral.
pub(crate) fn is_ephemeral(job: &Job) -> bool {
    job.parent.is_none()
        && job
            .metadata
            .get(PROCESS_METADATA_KEY)
            .and_then(|process| process.get("ephemeral"))
            .and_then(Value::as_bool)
            == Some(true)
}

/// Deletes an ended ephemeral process with its children, after a short linger (two poll
/// intervals) so that whoever waits on it still reads how it ended.
pub(crate) fn forget_ephemeral(engine: &Engine, ended: &Job) {
    let Some(engine) = engine.shared.engine.upgrade() else {
        return;
    };
    let ended = ended.clone();
    tokio::spawn(async move {
        tokio::time::sleep(engine.settings.poll_interval * 2).await;
        match delete_tree(&engine, &ended).await {
            Ok(count) => {
                if let Some(id) = process_id(&ended) {
                    schedules::forget(&engine, id);
                }
                tracing::debug!(job = %ended.id, count, "ephemeral process deleted")
            }
            // Relaunched meanwhile (active again): it stays until that run ends.
            Err(Error::ActiveJob { .. }) => {}
            Err(err) => {
                tracing::warn!(job = %ended.id, error = %err, "ephemeral process not deleted")
            }
        }
    });
}

impl crate::TaskContext {
    /// Marks the process this handler runs as ephemeral: once this run ends, it is deleted
    /// with its children. On a job that is not a top-level process, nothing happens.
    pub async fn mark_ephemeral(&self) -> tlo_core::Result<()> {
        let engine = self.engine()?;
        let id = self.job().id;
        let Some(job) = engine.store.get(id).await? else {
            return Err(Error::JobNotFound(id));
        };
        let mut metadata = job.metadata.clone();
        let Some(Value::Object(process)) = metadata.get_mut(PROCESS_METADATA_KEY) else {
            return Ok(());
        };
        process.insert("ephemeral".into(), Value::Bool(true));
        let change = tlo_core::transition::Change::Redefine {
            args: job.args,
            metadata,
            cancellable: job.cancellable,
        };
        engine.store.change(id, change).await.map(drop)
    }
}
