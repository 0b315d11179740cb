//! Workflow runs, made of ordinary jobs: one coordinator job (the run) and one job per node,
//! its children. Nodes wait in `scheduled` until the coordinator releases them (dependencies
//! `done`, a free place under the parallelism limit) or skips them (`UPSTREAM_FAILED`). The
//! coordinator keeps no state of its own: after a crash it is rescued like any job and carries
//! on from what the store says.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tlo_core::{CancelOutcome, Error, Job, JobFilter, JobId, JobState, NewJob, Result};

mod coordinator;

use crate::engine::{Engine, SubmitOptions};
use crate::handle::JobHandle;
use crate::task::{Fatal, TaskOptions};
use crate::workflow::Workflow;
use coordinator::{coordinate, node_id};

/// The task of coordinator jobs.
pub const COORDINATOR_TASK: &str = "tlo.workflow";
/// The error of a node skipped because an upstream node did not succeed.
pub const UPSTREAM_FAILED: &str = "UPSTREAM_FAILED";
/// The error of a node whose trigger rule was not met (`one_failed` with nothing failed).
pub const TRIGGER_NOT_MET: &str = "TRIGGER_RULE_NOT_MET";
/// Metadata keys on node jobs.
const RUN_KEY: &str = "workflow_run";
const NODE_KEY: &str = "workflow_node";
/// Metadata key of a per-node timeout, read by the runner.
pub(crate) const TIMEOUT_KEY: &str = "tlo.timeout_ms";

/// Nodes wait with this eta until released.
fn waiting_eta() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn is_waiting(job: &Job) -> bool {
    job.state == JobState::Scheduled && job.eta >= waiting_eta()
}

/// How a run is started.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// At most this many nodes running at once (default: no limit beyond the workers').
    pub parallelism: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CoordinatorArgs {
    workflow: String,
    input: Value,
    parallelism: Option<usize>,
}

/// One node's part of a run report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    /// The node.
    pub name: String,
    /// Its task.
    pub task: String,
    /// Its job.
    pub job: JobId,
    /// How it stands.
    pub state: JobState,
    /// Attempts made.
    pub attempts: u32,
    /// When its last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds from start to end.
    pub duration_s: Option<f64>,
    /// Its result.
    pub result: Option<Value>,
    /// Its error (`UPSTREAM_FAILED` when skipped).
    pub error: Option<String>,
}

/// A run's report: the run and each node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowReport {
    /// The run (its coordinator job).
    pub run: JobId,
    /// The workflow.
    pub workflow: String,
    /// How the run stands: `done` when no node failed.
    pub state: JobState,
    /// When the run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds from start to end.
    pub duration_s: Option<f64>,
    /// Its error, when it failed.
    pub error: Option<String>,
    /// The nodes, in topological order.
    pub nodes: Vec<NodeReport>,
}

/// A handle on a workflow run.
#[derive(Clone)]
pub struct WorkflowRun {
    handle: JobHandle<Value>,
    engine: Arc<Engine>,
}

impl std::fmt::Debug for WorkflowRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowRun")
            .field("id", &self.id())
            .finish()
    }
}

impl WorkflowRun {
    pub(crate) fn new(engine: Arc<Engine>, id: JobId) -> Self {
        WorkflowRun {
            handle: JobHandle::new(engine.clone(), id, true),
            engine,
        }
    }

    /// The run's id (its coordinator job).
    pub fn id(&self) -> JobId {
        self.handle.id()
    }

    /// Waits for the run to end and returns its report.
    pub async fn wait(&self) -> Result<WorkflowReport> {
        self.handle.wait().await?;
        self.report().await
    }

    /// Cancels the run: waiting nodes are cancelled, running ones asked to stop.
    pub async fn cancel(&self) -> Result<CancelOutcome> {
        self.handle.cancel().await
    }

    /// The report as it stands now.
    pub async fn report(&self) -> Result<WorkflowReport> {
        report(&self.engine, self.id()).await
    }
}

fn seconds(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Option<f64> {
    Some((end? - start?).as_seconds_f64())
}

fn node_name(job: &Job) -> Option<&str> {
    job.metadata.get(NODE_KEY)?.as_str()
}

/// The run's node jobs, in node order (stores list children by depth, then order).
async fn node_jobs(engine: &Engine, run: JobId) -> Result<Vec<Job>> {
    let mut jobs = engine.store.list(&JobFilter::default().parent(run)).await?;
    jobs.retain(|job| node_name(job).is_some());
    Ok(jobs)
}

/// The report of run `run`.
pub(crate) async fn report(engine: &Engine, run: JobId) -> Result<WorkflowReport> {
    let root = engine
        .store
        .get(run)
        .await?
        .ok_or(Error::JobNotFound(run))?;
    let args: CoordinatorArgs = serde_json::from_value(root.args.clone())?;
    let nodes = node_jobs(engine, run).await?;
    Ok(WorkflowReport {
        run,
        workflow: args.workflow,
        state: root.state,
        started_at: root.attempts.first().map(|a| a.started_at),
        finished_at: root.finished_at,
        duration_s: seconds(
            root.attempts.first().map(|a| a.started_at),
            root.finished_at,
        ),
        error: root.error,
        nodes: nodes
            .into_iter()
            .map(|job| NodeReport {
                name: node_name(&job).unwrap_or_default().to_owned(),
                duration_s: seconds(job.started_at, job.finished_at),
                task: job.task,
                job: job.id,
                state: job.state,
                attempts: job.attempt,
                started_at: job.started_at,
                finished_at: job.finished_at,
                result: job.result,
                error: job.error,
            })
            .collect(),
    })
}

/// Registers the coordinator task on first use.
pub(crate) fn ensure_coordinator(engine: &Arc<Engine>) -> Result<()> {
    if engine.registry.get(COORDINATOR_TASK).is_some() {
        return Ok(());
    }
    let weak: Weak<Engine> = Arc::downgrade(engine);
    // Rescued after a crash, a coordinator carries on: allow it many attempts.
    let options = TaskOptions::new()
        .max_attempts(1000)
        .backoff(crate::task::Backoff::fixed(Duration::from_secs(1)));
    let registered = engine.registry.register(
        COORDINATOR_TASK,
        options,
        move |ctx, args: CoordinatorArgs| {
            let weak = weak.clone();
            async move {
                let engine = weak
                    .upgrade()
                    .ok_or_else(|| Fatal("orchestrator is gone".into()))?;
                coordinate(&engine, &ctx, args).await
            }
        },
    );
    match registered {
        Ok(_) | Err(Error::DuplicateTask(_)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Creates the run: the coordinator job and one waiting job per node, in one store write.
pub(crate) async fn start(
    engine: &Arc<Engine>,
    workflow: &Workflow,
    input: Value,
    options: RunOptions,
) -> Result<JobId> {
    ensure_coordinator(engine)?;
    let coordinator = engine.registry.require(COORDINATOR_TASK)?;
    let args = serde_json::to_value(CoordinatorArgs {
        workflow: workflow.name().to_owned(),
        input,
        parallelism: options.parallelism,
    })?;
    let root_options = SubmitOptions::new().metadata("workflow", workflow.name());
    let root = engine.prepare(&coordinator, args, root_options, true)?;
    let mut jobs = vec![root.clone()];
    for (order, node) in workflow.nodes().iter().enumerate() {
        let def = engine.registry.require(&node.task)?;
        let mut options = SubmitOptions::new()
            .eta(waiting_eta())
            .metadata("workflow", workflow.name())
            .metadata(RUN_KEY, root.id.to_string())
            .metadata(NODE_KEY, node.name.clone());
        if let Some(attempts) = node.max_attempts {
            options = options.max_attempts(attempts);
        }
        if let Some(timeout) = node.timeout {
            options = options.metadata(TIMEOUT_KEY, timeout.as_millis() as u64);
        }
        let mut new: NewJob = engine.prepare(&def, node.args.clone(), options, true)?;
        new.id = node_id(root.id, &node.name);
        new.parent = Some(root.id);
        new.root = root.id;
        new.depth = 1;
        new.order = order as u32;
        jobs.push(new);
    }
    engine.enqueue(jobs).await?;
    Ok(root.id)
}
