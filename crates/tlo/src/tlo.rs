//! `Tlo`: the orchestrator that wires registry, store, locker, workers and scheduler together.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tlo_core::{CancelOutcome, Error, Job, JobFilter, JobId, LogEntry, Result, Store};
use tokio::task::JoinHandle;

use crate::builder::TloBuilder;
use crate::context::TaskContext;
use crate::engine::{Engine, SubmitOptions};
use crate::handle::{JobEvents, JobHandle};
use crate::metrics::MetricsSnapshot;
use crate::registry::TaskRegistry;
use crate::settings::{Settings, StopBehavior};
use crate::shell::ShellCommand;
use crate::task::{TaskOptions, TaskRef};
use crate::workflow::Workflow;
use crate::workflow_run::{self, RunOptions, WorkflowRun};
use crate::{batch, maintenance, scheduler, worker};

struct Running {
    dispatcher: JoinHandle<()>,
    /// `None` for workers-only orchestrators.
    scheduler: Option<JoinHandle<Result<()>>>,
    background: Vec<JoinHandle<()>>,
}

/// The orchestrator: register tasks, submit jobs, run workers and the scheduler.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tlo::{Tlo, TaskOptions};
/// let tlo = Tlo::builder().build()?;
/// let add = tlo.register("add", TaskOptions::new(), |_ctx, (a, b): (i64, i64)| async move {
///     Ok::<_, String>(a + b)
/// })?;
/// tlo.start()?;
/// let job = tlo.submit(&add, (2, 3)).await?;
/// assert_eq!(job.result().await?, 5);
/// tlo.stop().await?;
/// # Ok::<(), tlo::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct Tlo {
    engine: Arc<Engine>,
    running: Arc<Mutex<Option<Running>>>,
}

impl fmt::Debug for Tlo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tlo")
            .field("worker", &self.engine.worker_id)
            .field("store", &self.engine.store.name())
            .field("tasks", &self.engine.registry)
            .finish()
    }
}

impl Tlo {
    pub(crate) fn from_engine(engine: Arc<Engine>) -> Tlo {
        Tlo {
            engine,
            running: Arc::new(Mutex::new(None)),
        }
    }

    /// A builder.
    pub fn builder() -> TloBuilder {
        TloBuilder::default()
    }

    /// An orchestrator with settings from `TLO_*` variables and defaults.
    pub fn new() -> Result<Tlo> {
        Self::builder().build()
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The resolved settings.
    pub fn settings(&self) -> &Settings {
        &self.engine.settings
    }

    /// This worker's id (`host:pid` unless `TLO_WORKER_ID` says otherwise).
    pub fn worker_id(&self) -> &str {
        &self.engine.worker_id
    }

    /// The task registry.
    pub fn registry(&self) -> &TaskRegistry {
        &self.engine.registry
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.engine.store
    }

    fn learn(&self, options: &TaskOptions) {
        if let Some(queue) = &options.queue {
            self.engine.learn_queue(queue);
        }
    }

    /// Registers an async handler; see [`TaskRegistry::register`].
    pub fn register<A, O, E, F, Fut>(
        &self,
        name: &str,
        options: TaskOptions,
        handler: F,
    ) -> Result<TaskRef<A, O>>
    where
        F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        A: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        E: fmt::Display + 'static,
    {
        self.learn(&options);
        self.engine.registry.register(name, options, handler)
    }

    /// Registers a blocking handler; see [`TaskRegistry::register_blocking`].
    pub fn register_blocking<A, O, E, F>(
        &self,
        name: &str,
        options: TaskOptions,
        handler: F,
    ) -> Result<TaskRef<A, O>>
    where
        F: Fn(TaskContext, A) -> Result<O, E> + Send + Sync + 'static,
        A: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        E: fmt::Display + 'static,
    {
        self.learn(&options);
        self.engine
            .registry
            .register_blocking(name, options, handler)
    }

    /// Registers a shell command; see [`TaskRegistry::register_shell`].
    pub fn register_shell(
        &self,
        name: &str,
        options: TaskOptions,
        command: ShellCommand,
    ) -> Result<TaskRef<Value, Value>> {
        self.learn(&options);
        self.engine.registry.register_shell(name, options, command)
    }

    /// Registers a workflow; its nodes' tasks must be registered before it runs.
    pub fn register_workflow(&self, workflow: Workflow) -> Result<()> {
        workflow_run::ensure_coordinator(&self.engine)?;
        let mut workflows = self.engine.workflows.write();
        if workflows.contains_key(workflow.name()) {
            return Err(Error::DuplicateTask(format!(
                "workflow {}",
                workflow.name()
            )));
        }
        workflows.insert(workflow.name().to_owned(), Arc::new(workflow));
        Ok(())
    }

    /// The registered workflow `name`.
    pub fn workflow(&self, name: &str) -> Option<Arc<Workflow>> {
        self.engine.workflows.read().get(name).cloned()
    }

    /// Starts a run of workflow `name` with `input` (available to the coordinator and report).
    pub async fn run_workflow(&self, name: &str, input: Value) -> Result<WorkflowRun> {
        self.run_workflow_with(name, input, RunOptions::default())
            .await
    }

    /// Starts a run with options (a parallelism limit).
    pub async fn run_workflow_with(
        &self,
        name: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<WorkflowRun> {
        let workflow = self
            .workflow(name)
            .ok_or_else(|| Error::UnknownTask(format!("workflow {name}")))?;
        let id = workflow_run::start(&self.engine, &workflow, input, options).await?;
        Ok(WorkflowRun::new(self.engine.clone(), id))
    }

    /// A handle on an existing run.
    pub fn workflow_run(&self, id: JobId) -> WorkflowRun {
        WorkflowRun::new(self.engine.clone(), id)
    }

    /// Submits a job of a typed task with default options.
    ///
    /// The argument type is the task's: the compiler refuses anything else.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let tlo = tlo::Tlo::builder().build()?;
    /// let double = tlo.register("double", tlo::TaskOptions::new(), |_ctx, n: i64| async move {
    ///     Ok::<_, String>(n * 2)
    /// })?;
    /// let handle = tlo.submit(&double, 21).await?;
    /// # Ok::<(), tlo::Error>(()) }).unwrap();
    /// ```
    ///
    /// ```compile_fail
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let tlo = tlo::Tlo::builder().build()?;
    /// let double = tlo.register("double", tlo::TaskOptions::new(), |_ctx, n: i64| async move {
    ///     Ok::<_, String>(n * 2)
    /// })?;
    /// let handle = tlo.submit(&double, "twenty-one").await?; // a &str is not an i64
    /// # Ok::<(), tlo::Error>(()) }).unwrap();
    /// ```
    pub async fn submit<A: Serialize, O>(
        &self,
        task: &TaskRef<A, O>,
        args: A,
    ) -> Result<JobHandle<O>> {
        self.submit_with(task, args, SubmitOptions::default()).await
    }

    /// Submits a job of a typed task.
    pub async fn submit_with<A: Serialize, O>(
        &self,
        task: &TaskRef<A, O>,
        args: A,
        options: SubmitOptions,
    ) -> Result<JobHandle<O>> {
        let args = serde_json::to_value(args)?;
        let enqueued = self.engine.submit(task.name(), args, options, true).await?;
        Ok(JobHandle::new(
            self.engine.clone(),
            enqueued.id,
            enqueued.inserted,
        ))
    }

    /// Submits a job by task name with JSON arguments, checked against the task's argument type.
    pub async fn submit_json(
        &self,
        task: &str,
        args: Value,
        options: SubmitOptions,
    ) -> Result<JobHandle<Value>> {
        let enqueued = self.engine.submit(task, args, options, false).await?;
        Ok(JobHandle::new(
            self.engine.clone(),
            enqueued.id,
            enqueued.inserted,
        ))
    }

    /// Submits many jobs of one typed task in one store write; returns their ids in order.
    pub async fn submit_batch<A: Serialize, O>(
        &self,
        task: &TaskRef<A, O>,
        args: impl IntoIterator<Item = A>,
    ) -> Result<Vec<JobId>> {
        let def = self.engine.registry.require(task.name())?;
        let jobs = args
            .into_iter()
            .map(|args| {
                let args = serde_json::to_value(args)?;
                self.engine
                    .prepare(&def, args, SubmitOptions::default(), true)
            })
            .collect::<Result<Vec<_>>>()?;
        let enqueued = self.engine.enqueue(jobs).await?;
        Ok(enqueued.into_iter().map(|e| e.id).collect())
    }

    /// A handle on an existing job.
    pub fn handle<O>(&self, id: JobId) -> JobHandle<O> {
        JobHandle::new(self.engine.clone(), id, false)
    }

    /// One job.
    pub async fn job(&self, id: JobId) -> Result<Job> {
        self.engine
            .store
            .get(id)
            .await?
            .ok_or(Error::JobNotFound(id))
    }

    /// Jobs matching `filter`.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        self.engine.store.list(filter).await
    }

    /// A job's log.
    pub async fn logs(&self, id: JobId) -> Result<Vec<LogEntry>> {
        self.engine.store.logs(id).await
    }

    /// Requests a cancel; see [`JobHandle::cancel`].
    pub async fn cancel(&self, id: JobId) -> Result<CancelOutcome> {
        self.engine.cancel(id).await
    }

    /// Runs an ended job again, with one more attempt (`tlo retry`).
    pub async fn retry(&self, id: JobId) -> Result<Job> {
        let job = self.engine.store.relaunch(id, chrono::Utc::now()).await?;
        self.engine.learn_queue(&job.queue);
        self.engine.publish(&job, || crate::JobEventKind::Enqueued);
        self.engine.wake.notify_one();
        Ok(job)
    }

    /// Every job event from now on (feeds live updates).
    pub fn events(&self) -> JobEvents {
        JobEvents::all(self.engine.events.subscribe())
    }

    /// Counts and durations per task.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.engine.metrics.snapshot()
    }

    /// Whether workers are running.
    pub fn is_running(&self) -> bool {
        self.running.lock().is_some()
    }

    /// Starts workers, scheduler, heartbeats and flushing on the current tokio runtime.
    /// Starting twice is a no-op.
    pub fn start(&self) -> Result<()> {
        self.start_parts(true)
    }

    /// Starts workers but no scheduler (`tlo worker`): schedules are fired by other processes.
    pub fn start_workers(&self) -> Result<()> {
        self.start_parts(false)
    }

    fn start_parts(&self, with_scheduler: bool) -> Result<()> {
        let mut running = self.running.lock();
        if running.is_some() {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Shutdown)?;
        let engine = &self.engine;
        engine.set_stop(None);
        *engine.interrupt.lock() = tokio_util::sync::CancellationToken::new();
        engine.started.store(true, Ordering::Release);
        if engine.store.is_shared() {
            *engine.rounds.lock() = Some(batch::Rounds::start(engine));
        }
        *running = Some(Running {
            dispatcher: runtime.spawn(worker::dispatch(engine.clone())),
            scheduler: with_scheduler.then(|| runtime.spawn(scheduler::run(engine.clone()))),
            background: vec![
                runtime.spawn(maintenance::heartbeat(engine.clone())),
                runtime.spawn(maintenance::rescuer(engine.clone())),
                runtime.spawn(maintenance::flusher(engine.clone())),
                runtime.spawn(maintenance::pruner(engine.clone())),
            ],
        });
        Ok(())
    }

    /// Forces a stop in progress to end now, instead of waiting for the handlers still running
    /// (a `Drain` of a long job, a job defined not cancellable under `Cancel`): their handlers
    /// are dropped (shell commands killed; a blocking handler's thread runs on, unobserved) and
    /// their jobs go back to `scheduled`, due now, without using up the attempt (or end
    /// `cancelled` when a cancel was requested), for this or any other worker to run again.
    /// [`run_until_signal`](Self::run_until_signal) calls it on a second SIGINT or SIGTERM.
    /// The orchestrator takes no more work until its next [`start`](Self::start); called
    /// outside a stop, follow it with one.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// let tlo = tlo::Tlo::builder().build()?;
    /// let endless = tlo.register(
    ///     "endless",
    ///     tlo::TaskOptions::new().cancellable(false),
    ///     |_ctx, _: ()| async { std::future::pending::<Result<(), String>>().await },
    /// )?;
    /// tlo.start()?;
    /// let job = tlo.submit(&endless, ()).await?;
    /// tokio::time::sleep(Duration::from_millis(100)).await;
    /// let stopping = tlo.clone();
    /// let stop = tokio::spawn(async move { stopping.stop_with(tlo::StopBehavior::Cancel).await });
    /// tokio::time::sleep(Duration::from_millis(100)).await;
    /// tlo.force_stop();
    /// stop.await.unwrap()?;
    /// assert_eq!(tlo.job(job.id()).await?.state, tlo::JobState::Scheduled);
    /// # Ok::<(), tlo::Error>(()) }).unwrap();
    /// ```
    pub fn force_stop(&self) {
        // Ignore takes nothing more, not even the jobs just put back.
        self.engine.set_stop(Some(StopBehavior::Ignore));
        self.engine.interrupt.lock().cancel();
    }

    /// Stops with the configured stop behaviour (`TLO_STOP_BEHAVIOR`).
    pub async fn stop(&self) -> Result<()> {
        self.stop_with(self.engine.settings.stop_behavior).await
    }

    /// Stops: `Drain` finishes what runs and what is already due; `Cancel` cancels what runs
    /// here (and, on a store no other process shares, what is queued); `Ignore` stops taking
    /// work and leaves the queue as it is. Returns once nothing runs here any more; the error of
    /// a scheduler that failed in panic mode is returned here.
    pub async fn stop_with(&self, behavior: StopBehavior) -> Result<()> {
        let Some(running) = self.running.lock().take() else {
            return Ok(());
        };
        let engine = &self.engine;
        engine.set_stop(Some(behavior));
        if behavior == StopBehavior::Cancel {
            let ids: Vec<JobId> = engine.running.lock().keys().copied().collect();
            for id in ids {
                if let Err(err) = engine.cancel(id).await {
                    tracing::debug!(job = %id, error = %err, "cancel at stop");
                }
            }
            if !engine.store.is_shared() {
                let cancelled = engine
                    .store
                    .cancel_scheduled(&engine.served_queues())
                    .await?;
                tracing::info!(cancelled, "queued jobs cancelled at stop");
            }
        }
        let _ = running.dispatcher.await;
        loop {
            let finished = engine.finished.notified();
            if engine.in_flight.load(Ordering::Acquire) == 0
                && engine.side_jobs.load(Ordering::Acquire) == 0
                && engine.recording.load(Ordering::Acquire) == 0
            {
                break;
            }
            finished.await;
        }
        engine.put_back_ahead().await;
        engine.started.store(false, Ordering::Release);
        engine.rounds.lock().take();
        for task in running.background {
            task.abort();
        }
        match running.scheduler {
            Some(scheduler) => scheduler.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    /// Starts, runs until SIGINT or SIGTERM (or until the scheduler fails in panic mode), then
    /// stops with the configured behaviour.
    pub async fn run_until_signal(&self) -> Result<()> {
        self.start()?;
        self.wait_for_signal_then_stop().await
    }

    /// Like [`run_until_signal`](Self::run_until_signal) with workers only (`tlo worker`).
    pub async fn run_workers_until_signal(&self) -> Result<()> {
        self.start_workers()?;
        self.wait_for_signal_then_stop().await
    }

    async fn wait_for_signal_then_stop(&self) -> Result<()> {
        let mut stop = self.engine.stop.subscribe();
        #[cfg(unix)]
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        #[cfg(unix)]
        let terminated = terminate.recv();
        #[cfg(not(unix))]
        let terminated = std::future::pending::<Option<()>>();
        let scheduler_failed = async {
            loop {
                let done = match self.running.lock().as_ref() {
                    None => true,
                    Some(running) => running.scheduler.as_ref().is_some_and(|s| s.is_finished()),
                };
                if done {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = terminated => tracing::info!("SIGTERM: stopping"),
            _ = stop.wait_for(|s| s.is_some()) => {}
            _ = scheduler_failed => tracing::error!("scheduler ended: stopping"),
        }
        let stopping = self.stop();
        tokio::pin!(stopping);
        tokio::select! {
            result = &mut stopping => return result,
            _ = second_signal() => {}
        }
        let running = self.engine.running.lock().len();
        tracing::warn!(
            running,
            "second signal: interrupting the jobs still running; they go back to the queue"
        );
        self.force_stop();
        stopping.await
    }
}

/// The next SIGINT or SIGTERM.
async fn second_signal() {
    #[cfg(unix)]
    {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
