//! The coordinator of a run: the task that decides its nodes as their dependencies end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value, json};
use tlo_core::transition::Change;
use tlo_core::{Error, Job, JobId, JobState, Result};

use super::{CoordinatorArgs, TRIGGER_NOT_MET, UPSTREAM_FAILED, is_waiting, node_jobs, node_name};
use crate::context::TaskContext;
use crate::engine::Engine;
use crate::task::Fatal;
use crate::workflow::{TriggerRule, Workflow};

/// What the coordinator keeps of one node's job.
#[derive(Debug, Clone)]
struct NodeState {
    id: JobId,
    state: JobState,
    /// Still waiting to be released or skipped.
    waiting: bool,
    /// Its result once done (handed to its dependents).
    result: Option<Value>,
}

impl NodeState {
    fn of(job: Job) -> NodeState {
        NodeState {
            waiting: is_waiting(&job),
            id: job.id,
            state: job.state,
            result: job.result,
        }
    }
}

/// The id of node `node` of run `run`: derived from both, so a coordinator knows its nodes
/// without reading them.
pub(super) fn node_id(run: JobId, node: &str) -> JobId {
    run.derive(node)
}

/// A run as the coordinator sees it: node states, how many dependencies each still waits for,
/// and the nodes ready to be decided.
struct Plan {
    /// Node states, by node index (the workflow's topological order).
    nodes: Vec<NodeState>,
    by_id: HashMap<JobId, usize>,
    /// Each node's dependencies and dependents, by index.
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    /// Dependencies not yet ended, per node.
    remaining: Vec<usize>,
    /// Waiting nodes whose dependencies all ended.
    ready: std::collections::VecDeque<usize>,
    /// Released nodes not yet ended (for the parallelism limit).
    active: usize,
    ended: usize,
}

impl Plan {
    /// The plan of a run whose nodes were all just created waiting (a coordinator's first
    /// attempt): nothing to read. Anything that changed meanwhile (a node cancelled by hand)
    /// shows at the first refused update or the first periodic re-read.
    fn fresh(workflow: &Workflow, run: JobId) -> Plan {
        let nodes = workflow
            .nodes()
            .iter()
            .map(|node| NodeState {
                id: node_id(run, &node.name),
                state: JobState::Scheduled,
                waiting: true,
                result: None,
            })
            .collect();
        Plan::new(workflow, nodes)
    }

    /// Rebuilds the plan from the store: the truth after a rescue, a lag or another process.
    async fn load(engine: &Engine, workflow: &Workflow, run: JobId) -> Result<Plan> {
        let n = workflow.nodes().len();
        let mut slots: Vec<Option<Job>> = (0..n).map(|_| None).collect();
        for job in node_jobs(engine, run).await? {
            // A node's job carries its place in the workflow; the name decides if they differ.
            let name = node_name(&job).unwrap_or_default();
            let at = job.order as usize;
            let place = match workflow.nodes().get(at) {
                Some(node) if node.name == name => Some(at),
                _ => workflow.position(name),
            };
            if let Some(i) = place {
                slots[i] = Some(job);
            }
        }
        let nodes = workflow
            .nodes()
            .iter()
            .zip(slots)
            .map(|(node, slot)| {
                slot.map(NodeState::of)
                    .ok_or_else(|| Error::store(format!("node `{}` has no job", node.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Plan::new(workflow, nodes))
    }

    fn new(workflow: &Workflow, nodes: Vec<NodeState>) -> Plan {
        let n = nodes.len();
        let mut dependents = vec![Vec::new(); n];
        let mut deps = Vec::with_capacity(n);
        for (i, node) in workflow.nodes().iter().enumerate() {
            let mine: Vec<usize> = node
                .depends_on
                .iter()
                .filter_map(|d| workflow.position(d))
                .collect();
            for &dep in &mine {
                dependents[dep].push(i);
            }
            deps.push(mine);
        }
        let remaining: Vec<usize> = deps
            .iter()
            .map(|mine| mine.iter().filter(|&&d| !nodes[d].state.is_end()).count())
            .collect();
        let ready = (0..n)
            .filter(|&i| remaining[i] == 0 && nodes[i].waiting)
            .collect();
        let active = nodes
            .iter()
            .filter(|node| node.state.is_active() && !node.waiting)
            .count();
        let ended = nodes.iter().filter(|node| node.state.is_end()).count();
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (node.id, i))
            .collect();
        Plan {
            nodes,
            by_id,
            deps,
            dependents,
            remaining,
            ready,
            active,
            ended,
        }
    }

    /// Records that node `i` ended as `job`, readying dependents whose last dependency it was.
    fn node_ended(&mut self, i: usize, job: Job) {
        if self.nodes[i].state.is_end() {
            return;
        }
        if !self.nodes[i].waiting {
            self.active = self.active.saturating_sub(1);
        }
        self.nodes[i] = NodeState::of(job);
        self.ended += 1;
        for k in 0..self.dependents[i].len() {
            let d = self.dependents[i][k];
            self.remaining[d] = self.remaining[d].saturating_sub(1);
            if self.remaining[d] == 0 && self.nodes[d].waiting {
                self.ready.push_back(d);
            }
        }
    }

    /// Releases or skips ready nodes, as far as the parallelism limit allows: every decision
    /// of a round goes to the store in one [`change_many`](tlo_core::Store::change_many).
    async fn advance(
        &mut self,
        engine: &Engine,
        workflow: &Workflow,
        parallelism: Option<usize>,
    ) -> Result<()> {
        let mut deferred = std::collections::VecDeque::new();
        loop {
            let mut decided: Vec<usize> = Vec::new();
            let mut changes: Vec<(JobId, Change)> = Vec::new();
            let mut releasing = 0;
            while let Some(i) = self.ready.pop_front() {
                // A node is readied once (its last dependency ending), so it is decided once.
                if !self.nodes[i].waiting {
                    continue;
                }
                let change = match self.verdict(workflow, i) {
                    Some(error) => Change::Skip {
                        error: error.into(),
                    },
                    None if parallelism.is_some_and(|limit| self.active + releasing >= limit) => {
                        deferred.push_back(i);
                        continue;
                    }
                    None => {
                        releasing += 1;
                        Change::Release {
                            args: self.release_args(workflow, i),
                            eta: Utc::now(),
                        }
                    }
                };
                decided.push(i);
                changes.push((self.nodes[i].id, change));
            }
            if changes.is_empty() {
                break;
            }
            let results = engine.store.change_many(changes).await?;
            let mut released = false;
            for (i, result) in decided.into_iter().zip(results) {
                // A refused change means the plan is stale: the caller re-reads the run.
                let changed = result?;
                if changed.state.is_end() {
                    // A skip: its dependents may be decided in the next round.
                    self.node_ended(i, changed);
                } else {
                    self.active += 1;
                    self.nodes[i] = NodeState::of(changed);
                    released = true;
                }
            }
            if released {
                engine.wake.notify_one();
            }
        }
        self.ready = deferred;
        Ok(())
    }

    /// Why ready node `i` is skipped (its trigger rule not met by its dependencies), if it is.
    fn verdict(&self, workflow: &Workflow, i: usize) -> Option<&'static str> {
        let deps = || self.deps[i].iter().map(|&d| &self.nodes[d]);
        match workflow.nodes()[i].trigger {
            TriggerRule::AllSuccess if deps().all(|d| d.state == JobState::Done) => None,
            TriggerRule::AllSuccess => Some(UPSTREAM_FAILED),
            TriggerRule::AllDone => None,
            TriggerRule::OneFailed if deps().any(|d| d.state == JobState::Failed) => None,
            TriggerRule::OneFailed => Some(TRIGGER_NOT_MET),
        }
    }

    /// Node `i`'s arguments with its dependencies' results by name under `upstream`.
    fn release_args(&self, workflow: &Workflow, i: usize) -> Value {
        let node = &workflow.nodes()[i];
        let upstream: Map<String, Value> = node
            .depends_on
            .iter()
            .zip(&self.deps[i])
            .map(|(name, &d)| {
                let result = self.nodes[d].result.clone().unwrap_or(Value::Null);
                (name.clone(), result)
            })
            .collect();
        match node.args.clone() {
            Value::Object(mut map) => {
                map.insert("upstream".into(), Value::Object(upstream));
                Value::Object(map)
            }
            other => json!({ "args": other, "upstream": upstream }),
        }
    }
}

/// The coordinator: decides nodes as their dependencies end (told by job events in this
/// process, and by a full re-read of the run every poll interval for the others), until every
/// node ended. Its verdict is [`Fatal`]: a failed run is not retried, while a coordinator
/// rescued after a crash starts again and carries on. Store errors are waited out.
/// A coordinator's error: [`Fatal`] for its verdict, a plain error (retried) when a stopping
/// orchestrator interrupts it.
type CoordinatorError = Box<dyn std::error::Error + Send + Sync>;

pub(super) async fn coordinate(
    engine: &Arc<Engine>,
    ctx: &TaskContext,
    args: CoordinatorArgs,
) -> std::result::Result<Value, CoordinatorError> {
    let workflow = engine
        .workflows
        .read()
        .get(&args.workflow)
        .cloned()
        .ok_or_else(|| Box::new(Fatal(format!("unknown workflow `{}`", args.workflow))))?;
    let run = ctx.job_id();
    // Registered before reading the run, so that no end goes unnoticed in between.
    let (ends, mut ended_nodes) = tokio::sync::mpsc::unbounded_channel();
    engine.coordinators.lock().insert(run, ends);
    let verdict = coordinate_run(engine, ctx, &args, &workflow, &mut ended_nodes).await;
    engine.coordinators.lock().remove(&run);
    verdict
}

async fn coordinate_run(
    engine: &Arc<Engine>,
    ctx: &TaskContext,
    args: &CoordinatorArgs,
    workflow: &Workflow,
    ended_nodes: &mut tokio::sync::mpsc::UnboundedReceiver<Job>,
) -> std::result::Result<Value, CoordinatorError> {
    let run = ctx.job_id();

    let poll = engine.settings.poll_interval;
    // A first attempt follows the run's creation: no need to read its nodes back. (An attempt
    // given back by a forced stop counts as none, but it has reported progress: read then. A
    // stale plan is caught anyway, by the first refused change.)
    let mut fresh = ctx.attempt() == 1 && ctx.job().progress.percent.is_none();
    'reload: loop {
        let loaded = if std::mem::take(&mut fresh) {
            Ok(Plan::fresh(workflow, run))
        } else {
            Plan::load(engine, workflow, run).await
        };
        let mut plan = match loaded {
            Ok(plan) => plan,
            Err(err) => {
                tracing::warn!(%run, error = %err, "workflow: reading the run failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut next_reload = tokio::time::Instant::now() + poll;
        loop {
            if !ctx.should_continue() {
                return Err(Box::new(cancel_nodes(engine, run).await));
            }
            if engine.is_stopping() {
                // A drain would wait for nodes it never claims: give the run back instead; it
                // is retried, and carries on from the store when workers run again.
                return Err("interrupted by a stopping orchestrator; the run resumes later".into());
            }
            if let Err(err) = plan.advance(engine, workflow, args.parallelism).await {
                tracing::warn!(%run, error = %err, "workflow: a node update failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue 'reload;
            }
            let total = plan.nodes.len();
            if plan.ended == total {
                return verdict(workflow, &plan)
                    .map_err(|fatal| Box::new(fatal) as CoordinatorError);
            }
            ctx.report_progress(
                100.0 * plan.ended as f64 / total.max(1) as f64,
                String::new(),
            );
            let mut stopping = engine.stop.subscribe();
            tokio::select! {
                _ = ctx.cancelled() => {}
                _ = stopping.wait_for(|stop| stop.is_some()) => {}
                _ = tokio::time::sleep_until(next_reload) => {
                    next_reload = tokio::time::Instant::now() + poll;
                    continue 'reload;
                }
                Some(job) = ended_nodes.recv() => {
                    if let Some(&i) = plan.by_id.get(&job.id) {
                        plan.node_ended(i, job);
                    }
                    // Take every end already waiting before deciding again.
                    while let Ok(job) = ended_nodes.try_recv() {
                        if let Some(&i) = plan.by_id.get(&job.id) {
                            plan.node_ended(i, job);
                        }
                    }
                }
            }
        }
    }
}

/// Cancels the run's active nodes and waits until they have ended.
async fn cancel_nodes(engine: &Engine, run: JobId) -> Fatal {
    if let Ok(nodes) = node_jobs(engine, run).await {
        for job in nodes.iter().filter(|j| j.state.is_active()) {
            let _ = engine.cancel(job.id).await;
        }
    }
    // The run ends once its nodes have (a stubborn one is forced after the grace).
    while let Ok(nodes) = node_jobs(engine, run).await {
        if nodes.iter().all(|j| !j.state.is_active()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Fatal("workflow run cancelled".into())
}

fn verdict(workflow: &Workflow, plan: &Plan) -> std::result::Result<Value, Fatal> {
    let failed: Vec<&str> = workflow
        .nodes()
        .iter()
        .zip(&plan.nodes)
        .filter(|(_, node)| node.state == JobState::Failed)
        .map(|(node, _)| node.name.as_str())
        .collect();
    if failed.is_empty() {
        let states: Map<String, Value> = workflow
            .nodes()
            .iter()
            .zip(&plan.nodes)
            .map(|(node, state)| (node.name.clone(), Value::from(state.state.as_str())))
            .collect();
        Ok(json!({ "nodes": states }))
    } else {
        Err(Fatal(format!("nodes failed: {}", failed.join(", "))))
    }
}
