//! `TaskContext`: what a handler gets besides its arguments.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tlo_core::{Job, JobId, LogEntry, LogLevel, Progress};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Most log lines buffered between two flushes; the rest are counted and reported as
/// "(N messages dropped)".
pub(crate) const LOG_BUFFER_CAP: usize = 1000;

/// Shared services handed to every handler (database pools, HTTP clients, ...), by type.
#[derive(Clone, Default)]
pub struct Services {
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Services({})", self.by_type.len())
    }
}

impl Services {
    /// Adds (or replaces) the service of type `T`.
    pub fn insert<T: Any + Send + Sync>(&mut self, service: T) {
        self.by_type.insert(TypeId::of::<T>(), Arc::new(service));
    }

    /// The service of type `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.by_type
            .get(&TypeId::of::<T>())
            .cloned()
            .and_then(|service| service.downcast::<T>().ok())
    }
}

#[derive(Debug, Default)]
struct ReportBuffer {
    progress: Option<Progress>,
    logs: Vec<LogEntry>,
    dropped: u64,
}

/// Progress and log lines waiting for the next flush.
#[derive(Debug, Default)]
pub(crate) struct Reporter {
    buffer: Mutex<ReportBuffer>,
    dirty: AtomicBool,
}

/// What a flush writes.
#[derive(Debug, Default)]
pub(crate) struct Flush {
    pub(crate) progress: Option<Progress>,
    pub(crate) logs: Vec<LogEntry>,
}

impl Reporter {
    fn push_log(&self, attempt: u32, level: LogLevel, message: String) {
        let mut buffer = self.buffer.lock();
        if buffer.logs.len() >= LOG_BUFFER_CAP {
            buffer.dropped += 1;
        } else {
            buffer.logs.push(LogEntry {
                at: Utc::now(),
                level,
                message,
                attempt,
            });
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Takes what is buffered, if anything.
    pub(crate) fn take(&self, attempt: u32) -> Option<Flush> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut buffer = self.buffer.lock();
        let mut logs = std::mem::take(&mut buffer.logs);
        if buffer.dropped > 0 {
            logs.push(LogEntry {
                at: Utc::now(),
                level: LogLevel::Warning,
                message: format!("({} messages dropped)", buffer.dropped),
                attempt,
            });
            buffer.dropped = 0;
        }
        Some(Flush {
            progress: buffer.progress.take(),
            logs,
        })
    }
}

/// What every job's context shares with its engine, behind one `Arc`.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) services: Services,
    /// The engine, for child jobs (weak: the engine holds running contexts).
    pub(crate) engine: std::sync::Weak<crate::engine::Engine>,
}

/// The per-attempt state shared by a handler's context and the worker running it.
#[derive(Debug)]
pub(crate) struct ContextInner {
    /// The job as claimed (arguments moved out to the handler).
    pub(crate) job: Job,
    pub(crate) cancel: CancellationToken,
    pub(crate) reporter: Reporter,
    pub(crate) shared: Arc<Shared>,
    /// Children started so far, for their order among siblings.
    pub(crate) children: std::sync::atomic::AtomicU32,
}

/// What a handler gets: ids, attempt, metadata, services, the cancellation signal, and the
/// means to report progress and write to the job's log.
///
/// Progress and log writes are buffered and flushed every
/// `TLO_PROGRESS_FLUSH_INTERVAL_MS` (default 100 ms) and always when the job ends.
///
/// ```
/// use tlo::{TaskContext, LogLevel};
/// async fn handler(ctx: TaskContext, files: Vec<String>) -> Result<usize, String> {
///     for (i, file) in files.iter().enumerate() {
///         if !ctx.should_continue() {
///             return Err("cancelled".into());
///         }
///         ctx.report_progress(100.0 * i as f64 / files.len() as f64, format!("copying {file}"));
///         ctx.log(LogLevel::Debug, format!("copied {file}"));
///     }
///     Ok(files.len())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub(crate) inner: Arc<ContextInner>,
}

impl TaskContext {
    pub(crate) fn new(job: Job, shared: Arc<Shared>) -> Self {
        TaskContext {
            inner: Arc::new(ContextInner {
                job,
                cancel: CancellationToken::new(),
                reporter: Reporter::default(),
                shared,
                children: std::sync::atomic::AtomicU32::new(0),
            }),
        }
    }

    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.inner.job.id
    }
    /// The task name.
    pub fn task(&self) -> &str {
        &self.inner.job.task
    }
    /// The attempt number, 1-based.
    pub fn attempt(&self) -> u32 {
        self.inner.job.attempt
    }
    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.inner.job.max_attempts
    }
    /// The job's metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.inner.job.metadata
    }
    /// The job's unique key (a process id), if any.
    pub fn unique_key(&self) -> Option<&str> {
        self.inner.job.unique_key.as_deref()
    }
    /// The parent job, for a child.
    pub fn parent(&self) -> Option<JobId> {
        self.inner.job.parent
    }
    /// The root of the job's tree.
    pub fn root(&self) -> JobId {
        self.inner.job.root
    }
    /// The job's record as claimed (its `args` are moved to the handler and read `null` here).
    pub fn job(&self) -> &Job {
        &self.inner.job
    }

    /// `false` once a cancel was requested: a cooperative handler stops soon after.
    pub fn should_continue(&self) -> bool {
        !self.inner.cancel.is_cancelled()
    }

    pub(crate) fn is_cancel_requested(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Completes when a cancel is requested, for use in `tokio::select!`.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.inner.cancel.cancelled()
    }

    /// Reports progress: `percent` 0-100 (clamped), or `None` for indeterminate, and a message
    /// (also appended to the log; empty for none).
    pub fn report_progress(&self, percent: impl Into<Option<f64>>, message: impl Into<String>) {
        let message = message.into();
        let percent = percent.into().map(|p| p.clamp(0.0, 100.0));
        let message = (!message.is_empty()).then_some(message);
        if let Some(text) = &message {
            self.inner
                .reporter
                .push_log(self.attempt(), LogLevel::Event, text.clone());
        }
        self.inner.reporter.buffer.lock().progress = Some(Progress { percent, message });
        self.inner.reporter.dirty.store(true, Ordering::Release);
    }

    /// Appends a line to the job's log.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.inner
            .reporter
            .push_log(self.attempt(), level, message.into());
    }

    /// The injected service of type `T`.
    pub fn service<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.inner.shared.services.get::<T>()
    }
}
