//! The engine: state shared by the orchestrator, its workers, scheduler and handles.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};
use tlo_core::{
    CancelOutcome, Enqueued, Error, Job, JobId, JobIdMap, JobState, Locker, NewJob, Result, Store,
};
use tokio::sync::{Notify, Semaphore, watch};

use crate::context::{ContextInner, Services};
use crate::events::{EventBus, Hooks, JobEvent, JobEventKind};
use crate::metrics::{Count, Metrics};
use crate::registry::TaskRegistry;
use crate::settings::{Settings, StopBehavior};
use crate::task::{Handler, TaskDef};

/// Per-submission choices that override the task's options.
///
/// ```
/// use std::time::Duration;
/// let options = tlo::SubmitOptions::new()
///     .queue("reports")
///     .priority(10)
///     .delay(Duration::from_secs(60))
///     .metadata("tenant", "acme")
///     .unique_key("monthly-report-2026-11");
/// assert_eq!(options.priority, Some(10));
/// ```
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Queue (default: the task's, else the settings' default).
    pub queue: Option<String>,
    /// Priority (default: the task's).
    pub priority: Option<i32>,
    /// Not before this instant.
    pub eta: Option<chrono::DateTime<Utc>>,
    /// Not before now + this (ignored when `eta` is set).
    pub delay: Option<Duration>,
    /// Metadata, added to the task's.
    pub metadata: Map<String, Value>,
    /// A unique key: when a job with it exists, that job's handle is returned instead.
    pub unique_key: Option<String>,
    /// Attempts in all (default: the task's).
    pub max_attempts: Option<u32>,
}

impl SubmitOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
    /// Sets the priority (higher first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }
    /// Runs no earlier than `eta`.
    pub fn eta(mut self, eta: chrono::DateTime<Utc>) -> Self {
        self.eta = Some(eta);
        self
    }
    /// Runs no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    /// Adds a metadata pair.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Sets a unique key.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
    /// Sets the number of attempts in all.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }
}

/// Where the orchestrator is in its life, readable without a lock on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    Running = 0,
    Drain = 1,
    Cancel = 2,
    Ignore = 3,
}

pub(crate) struct Engine {
    pub(crate) settings: Settings,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) locker: Arc<dyn Locker>,
    pub(crate) registry: Arc<TaskRegistry>,
    pub(crate) events: EventBus,
    pub(crate) hooks: Hooks,
    /// Launch blocks on processes (in this process's memory).
    pub(crate) launch_blocks: Arc<crate::process::LaunchBlocks>,
    /// The schedules of the processes this orchestrator defined, by process id.
    pub(crate) process_schedules: RwLock<std::collections::BTreeMap<String, crate::Schedule>>,
    pub(crate) metrics: Metrics,
    /// Handed to every job's context with one reference count: services and a way back here.
    pub(crate) shared: Arc<crate::context::Shared>,
    pub(crate) worker_id: String,
    /// Jobs executing in this process.
    pub(crate) running: Mutex<JobIdMap<Arc<ContextInner>>>,
    /// Jobs claimed here and not yet finished (including those waiting on their lock check).
    pub(crate) in_flight: AtomicUsize,
    /// Jobs running beside the slots (workflow coordinators).
    pub(crate) side_jobs: AtomicUsize,
    /// Claims that failed in a row (the store unreachable): the dispatcher backs off, and only
    /// the first failure and the recovery are logged at warning and info.
    pub(crate) claim_failures: AtomicU32,
    /// Per-queue count of `in_flight`, kept only when per-queue limits are set.
    pub(crate) queue_in_flight: Mutex<HashMap<String, usize>>,
    /// Wakes the dispatcher: new work (here or, through the store, elsewhere), or a free slot.
    pub(crate) wake: Arc<Notify>,
    /// Signalled each time a job finishes here (stop waits on it).
    pub(crate) finished: Notify,
    /// Bounds the blocking-handler thread pool.
    pub(crate) blocking: Arc<Semaphore>,
    /// Queues this worker serves (configured, or learnt from tasks and submissions).
    pub(crate) queues: RwLock<BTreeSet<String>>,
    /// A snapshot of `queues` for claims.
    queue_list: RwLock<Arc<[String]>>,
    pub(crate) queues_version: AtomicU64,
    /// Whether workers run (submissions may then claim at once).
    pub(crate) started: AtomicBool,
    stop_mode: AtomicU8,
    /// When a drain began: it takes the jobs due by then.
    pub(crate) drain_since: Mutex<Option<DateTime<Utc>>>,
    /// Claims take turns when per-queue limits are set.
    pub(crate) claim_turn: tokio::sync::Mutex<()>,
    /// Parents waiting here for their children (workflow coordinators, parallel groups), by
    /// parent: the runners hand them their children's ends directly.
    pub(crate) coordinators: Mutex<JobIdMap<tokio::sync::mpsc::UnboundedSender<Job>>>,
    /// Registered workflows, by name.
    pub(crate) workflows: RwLock<HashMap<String, Arc<crate::workflow::Workflow>>>,
    /// Batched rounds of outcomes and of claims, for shared stores while running.
    pub(crate) rounds: Mutex<Option<crate::batch::Rounds>>,
    /// Outcomes handed to the outcome stream and not yet recorded.
    pub(crate) recording: AtomicUsize,
    /// Jobs put back by exclusivity during a drain: the drain waits for them too.
    pub(crate) drain_snoozed: Mutex<HashSet<JobId>>,
    pub(crate) stop: watch::Sender<Option<StopBehavior>>,
    /// Fired by a forced stop: running handlers end now and their jobs go back to the queue.
    /// A fresh token for every start.
    pub(crate) interrupt: Mutex<tokio_util::sync::CancellationToken>,
}

impl Engine {
    pub(crate) fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        locker: Arc<dyn Locker>,
        registry: Arc<TaskRegistry>,
        hooks: Hooks,
        services: Services,
        this: std::sync::Weak<Engine>,
    ) -> Self {
        let worker_id = settings.worker_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
            format!("{host}:{}", std::process::id())
        });
        let wake = Arc::new(Notify::new());
        let waker = wake.clone();
        store.subscribe_wakeups(Arc::new(move || waker.notify_one()));
        let mut queues: BTreeSet<String> = settings.queues.iter().cloned().collect();
        queues.insert(settings.default_queue.clone());
        Engine {
            blocking: Arc::new(Semaphore::new(settings.blocking_threads)),
            settings,
            store,
            locker,
            registry,
            events: EventBus::new(4096),
            hooks,
            launch_blocks: Arc::default(),
            process_schedules: RwLock::default(),
            metrics: Metrics::default(),
            shared: Arc::new(crate::context::Shared {
                services,
                engine: this,
            }),
            worker_id,
            running: Mutex::new(JobIdMap::default()),
            in_flight: AtomicUsize::new(0),
            side_jobs: AtomicUsize::new(0),
            claim_failures: AtomicU32::new(0),
            queue_in_flight: Mutex::new(HashMap::new()),
            wake,
            finished: Notify::new(),
            queue_list: RwLock::new(queues.iter().cloned().collect()),
            queues: RwLock::new(queues),
            queues_version: AtomicU64::new(0),
            started: AtomicBool::new(false),
            stop_mode: AtomicU8::new(StopMode::Running as u8),
            drain_since: Mutex::new(None),
            claim_turn: tokio::sync::Mutex::new(()),
            rounds: Mutex::new(None),
            recording: AtomicUsize::new(0),
            workflows: RwLock::new(HashMap::new()),
            coordinators: Mutex::new(JobIdMap::default()),
            drain_snoozed: Mutex::new(HashSet::new()),
            stop: watch::channel(None).0,
            interrupt: Mutex::default(),
        }
    }

    /// Adds `queue` to those served, unless the settings fix the list.
    pub(crate) fn learn_queue(&self, queue: &str) {
        if !self.settings.queues.is_empty() || self.queues.read().contains(queue) {
            return;
        }
        let mut queues = self.queues.write();
        queues.insert(queue.to_owned());
        *self.queue_list.write() = queues.iter().cloned().collect();
        self.queues_version.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn served_queues(&self) -> Arc<[String]> {
        self.queue_list.read().clone()
    }

    pub(crate) fn stop_mode(&self) -> StopMode {
        match self.stop_mode.load(Ordering::Acquire) {
            0 => StopMode::Running,
            1 => StopMode::Drain,
            2 => StopMode::Cancel,
            _ => StopMode::Ignore,
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stop_mode() != StopMode::Running
    }

    /// Enters a stop behaviour (or, with `None`, runs again) and tells every loop.
    pub(crate) fn set_stop(&self, behavior: Option<StopBehavior>) {
        let mode = match behavior {
            None => StopMode::Running,
            Some(StopBehavior::Drain) => {
                *self.drain_since.lock() = Some(Utc::now());
                StopMode::Drain
            }
            Some(StopBehavior::Cancel) => StopMode::Cancel,
            Some(StopBehavior::Ignore) => StopMode::Ignore,
        };
        if mode == StopMode::Running {
            *self.drain_since.lock() = None;
        }
        self.stop_mode.store(mode as u8, Ordering::Release);
        self.stop.send_replace(behavior);
        self.finished.notify_waiters();
    }

    pub(crate) fn publish(&self, job: &Job, kind: impl FnOnce() -> JobEventKind) {
        if self.events.has_listeners() {
            self.events.publish(JobEvent::of(job, kind()));
        }
    }

    /// Builds the stored form of a submission, checking it against the task's definition.
    pub(crate) fn prepare(
        &self,
        def: &TaskDef,
        args: Value,
        options: SubmitOptions,
        checked_type: bool,
    ) -> Result<NewJob> {
        let task = def.name();
        if !checked_type {
            if let Some(validate) = &def.validate {
                validate(&args).map_err(|message| Error::InvalidArguments {
                    task: task.to_owned(),
                    message,
                })?;
            }
        }
        if let Handler::Shell(command) = &def.handler {
            command.template().render_shell(task, &args)?;
        }
        let lock_key = match &def.exclusive {
            Some(template) => Some(template.render(task, &args)?),
            None => None,
        };
        let opts = &def.options;
        let queue = options
            .queue
            .or_else(|| opts.queue.clone())
            .unwrap_or_else(|| self.settings.default_queue.clone());
        self.learn_queue(&queue);
        let mut metadata = opts.metadata.clone();
        metadata.extend(options.metadata);
        let eta = match (options.eta, options.delay) {
            (Some(eta), _) => eta,
            (None, Some(delay)) => Utc::now() + delay,
            (None, None) => Utc::now(),
        };
        let mut new = NewJob::new(task, args);
        new.queue = queue;
        new.priority = options.priority.unwrap_or(opts.priority);
        new.max_attempts = options.max_attempts.unwrap_or(opts.max_attempts).max(1);
        new.eta = eta;
        new.metadata = metadata;
        new.unique_key = options.unique_key;
        new.lock_key = lock_key;
        new.cancellable = !opts.not_cancellable;
        Ok(new)
    }

    /// Stores prepared jobs and gets them going: a due job with a free slot is claimed right
    /// here (no hand-off to the dispatcher), the rest wake the dispatcher.
    pub(crate) async fn enqueue(self: &Arc<Self>, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let now = Utc::now();
        let due = jobs.iter().filter(|job| job.eta <= now).count();
        let tasks: Vec<(String, JobState)> = jobs
            .iter()
            .map(|job| (job.task.clone(), job.state))
            .collect();
        let ready = due > 0 && self.started.load(Ordering::Acquire) && !self.is_stopping();
        // A due job and a free slot: claimed with the enqueue (one round trip on a database
        // server), no hand-off to the dispatcher. Per-queue limits take the careful path below.
        let reserved = if ready && self.settings.queue_concurrency.is_empty() {
            self.reserve(due.min(crate::worker::CLAIM_BATCH))
        } else {
            0
        };
        let request = (reserved > 0)
            .then(|| self.plain_claim_request(reserved))
            .flatten();
        let (enqueued, claimed) = match &request {
            Some(request) => match self.store.enqueue_and_claim(jobs, request).await {
                Ok((enqueued, claimed)) => (enqueued, Some(claimed)),
                Err(err) => {
                    self.unreserve(reserved);
                    return Err(err);
                }
            },
            None => {
                self.unreserve(reserved);
                (self.store.enqueue(jobs).await?, None)
            }
        };
        for ((task, state), result) in tasks.iter().zip(&enqueued) {
            if result.inserted {
                self.metrics.count(task, Count::Enqueued, None);
                // From what was stored, not read back: a read per job cost a parent starting
                // 1,000 children on PostgreSQL half its time.
                if self.events.has_listeners() {
                    self.events.publish(JobEvent {
                        job: result.id,
                        task: task.clone(),
                        state: *state,
                        attempt: 0,
                        at: Utc::now(),
                        kind: JobEventKind::Enqueued,
                    });
                }
            }
        }
        let started = match claimed {
            Some(claimed) => {
                let jobs = claimed.unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "claiming with the enqueue failed; will retry");
                    Vec::new()
                });
                self.note_claimed(&jobs);
                self.start_claimed(reserved, jobs)
            }
            None if ready => self.fill_slots(due).await,
            None => 0,
        };
        if started < due || due == 0 {
            self.wake.notify_one();
        }
        Ok(enqueued)
    }

    pub(crate) async fn submit(
        self: &Arc<Self>,
        task: &str,
        args: Value,
        options: SubmitOptions,
        checked_type: bool,
    ) -> Result<Enqueued> {
        let def = self.registry.require(task)?;
        let new = self.prepare(&def, args, options, checked_type)?;
        let mut enqueued = self.enqueue(vec![new]).await?;
        enqueued
            .pop()
            .ok_or_else(|| Error::store("store returned no id"))
    }

    /// Requests a cancel and, when the job runs here, signals its handler.
    pub(crate) async fn cancel(&self, id: JobId) -> Result<CancelOutcome> {
        if let Some(job) = self.store.get(id).await? {
            if job.state == JobState::Running && !job.cancellable {
                return Err(Error::NotCancellable(id));
            }
        }
        let outcome = self.store.request_cancel(id).await?;
        let job = self.store.get(id).await?.ok_or(Error::JobNotFound(id))?;
        match outcome {
            CancelOutcome::Cancelled => {
                self.metrics.count(&job.task, Count::Cancelled, None);
                self.publish(&job, || JobEventKind::Cancelled);
                crate::events::Hooks::run(&self.hooks.cancelled, &job);
            }
            CancelOutcome::Requested => {
                self.publish(&job, || JobEventKind::CancelRequested);
                let context = self.running.lock().get(&id).cloned();
                if let Some(context) = context {
                    context.cancel.cancel();
                }
            }
        }
        Ok(outcome)
    }
}
