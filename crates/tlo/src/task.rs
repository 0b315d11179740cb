//! Task definitions: a name, a handler and options.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::context::TaskContext;
use crate::schedule::Schedule;
use crate::shell::ShellCommand;
use crate::template::Template;

/// How long to wait before the next attempt after a failure (woflo's retry wait, done right).
///
/// ```
/// use std::time::Duration;
/// use tlo::Backoff;
/// let fixed = Backoff::fixed(Duration::from_secs(5));
/// assert_eq!(fixed.delay(3), Duration::from_secs(5));
/// let exp = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)).jitter(false);
/// assert_eq!(exp.delay(1), Duration::from_secs(1));
/// assert_eq!(exp.delay(4), Duration::from_secs(8));
/// assert_eq!(exp.delay(30), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backoff {
    /// The same wait after every failed attempt.
    Fixed(Duration),
    /// `base * factor^(attempt-1)`, capped at `max`; with jitter, a random value in
    /// `[delay/2, delay]` so that failing jobs do not retry in lock-step.
    Exponential {
        /// Wait after the first failure.
        base: Duration,
        /// Growth per attempt.
        factor: f64,
        /// Upper bound of any wait.
        max: Duration,
        /// Randomise each wait.
        jitter: bool,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(300))
    }
}

impl Backoff {
    /// A fixed wait.
    pub fn fixed(wait: Duration) -> Self {
        Backoff::Fixed(wait)
    }

    /// Doubling waits from `base` up to `max`, with jitter.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Backoff::Exponential {
            base,
            factor: 2.0,
            max,
            jitter: true,
        }
    }

    /// Turns jitter on or off (no effect on a fixed backoff).
    pub fn jitter(self, on: bool) -> Self {
        match self {
            Backoff::Exponential {
                base, factor, max, ..
            } => Backoff::Exponential {
                base,
                factor,
                max,
                jitter: on,
            },
            fixed => fixed,
        }
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        match *self {
            Backoff::Fixed(wait) => wait,
            Backoff::Exponential {
                base,
                factor,
                max,
                jitter,
            } => {
                let exp = factor.powi(attempt.saturating_sub(1).min(64) as i32);
                let secs = (base.as_secs_f64() * exp).min(max.as_secs_f64());
                let delay = Duration::from_secs_f64(secs.max(0.0));
                if jitter {
                    let unit = (RandomState::new().hash_one(attempt) % 10_000) as f64 / 10_000.0;
                    delay.mul_f64(0.5 + unit * 0.5)
                } else {
                    delay
                }
            }
        }
    }
}

/// Options of a task. Every field has a sensible default.
///
/// ```
/// use std::time::Duration;
/// use tlo::{Backoff, TaskOptions};
/// let options = TaskOptions::new()
///     .queue("emails")
///     .max_attempts(3)
///     .backoff(Backoff::fixed(Duration::from_secs(10)))
///     .timeout(Duration::from_secs(30))
///     .exclusive("{user_id}")
///     .description("Sends the weekly digest");
/// assert_eq!(options.max_attempts, 3);
/// ```
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    /// Queue (default: the settings' default queue).
    pub queue: Option<String>,
    /// Higher runs first among due jobs (default 0).
    pub priority: i32,
    /// Attempts in all, first included (default 1: no retry).
    pub max_attempts: u32,
    /// Wait between attempts.
    pub backoff: Backoff,
    /// An attempt running longer fails with "Timeout after {t}s".
    pub timeout: Option<Duration>,
    /// Exclusivity key template, e.g. `"{user_id}"`.
    pub exclusive: Option<String>,
    /// Run on an interval or cron schedule.
    pub schedule: Option<Schedule>,
    /// Arguments of scheduled runs (default `{}`).
    pub schedule_args: Option<Value>,
    /// Whether cancels are accepted while it runs (default true).
    pub not_cancellable: bool,
    /// What it does.
    pub description: Option<String>,
    /// A caution shown to operators before launching it.
    pub warning: Option<String>,
    /// Metadata copied onto every job of this task.
    pub metadata: Map<String, Value>,
}

impl TaskOptions {
    /// Defaults.
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
        self.priority = priority;
        self
    }
    /// Sets the number of attempts in all.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }
    /// Sets the backoff between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// Sets the per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Sets the exclusivity key template (`"{user_id}"`, or a constant for whole-task exclusivity).
    pub fn exclusive(mut self, template: impl Into<String>) -> Self {
        self.exclusive = Some(template.into());
        self
    }
    /// Runs the task on a schedule.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = Some(schedule);
        self
    }
    /// Arguments for scheduled runs.
    pub fn schedule_args(mut self, args: Value) -> Self {
        self.schedule_args = Some(args);
        self
    }
    /// Refuses cancels while running (`cancellable = false`).
    pub fn cancellable(mut self, cancellable: bool) -> Self {
        self.not_cancellable = !cancellable;
        self
    }
    /// Sets the description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }
    /// Sets the operator warning.
    pub fn warning(mut self, text: impl Into<String>) -> Self {
        self.warning = Some(text.into());
        self
    }
    /// Adds a metadata pair copied onto every job.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// An error that fails the job at once, whatever attempts remain (River's `JobCancel`, Oban's
/// `{:cancel, reason}`): for inputs that will never work.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let tlo = tlo::Tlo::builder().build()?;
/// let parse = tlo.register("parse", tlo::TaskOptions::new().max_attempts(5), |_ctx, text: String| async move {
///     text.parse::<i64>().map_err(|err| tlo::Fatal(format!("not a number: {err}")))
/// })?;
/// tlo.start()?;
/// let job = tlo.submit(&parse, "x".into()).await?.wait().await?;
/// assert_eq!((job.state, job.attempt), (tlo::JobState::Failed, 1));
/// # tlo.stop().await?;
/// # Ok::<(), tlo::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal(pub String);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Turns a handler's error into how the attempt failed.
/// A boxed error counts too: `Err(Box::new(Fatal(..)))` from a handler returning
/// `Box<dyn Error + Send + Sync>`.
fn failure<E: fmt::Display + 'static>(err: E) -> HandlerError {
    let any = &err as &dyn std::any::Any;
    let fatal = any.downcast_ref::<Fatal>().or_else(|| {
        any.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>()
            .and_then(|boxed| boxed.downcast_ref::<Fatal>())
    });
    match fatal {
        Some(fatal) => HandlerError::Fatal(fatal.0.clone()),
        None => HandlerError::Failed(err.to_string()),
    }
}

/// Why a handler did not produce a result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HandlerError {
    /// The handler returned an error (or panicked).
    Failed(String),
    /// The handler returned [`Fatal`]: no retry.
    Fatal(String),
    /// The handler stopped because of a cancel.
    Cancelled,
    /// The handler did not stop within the grace period and was forced.
    Forced(String),
    /// A forced stop dropped the handler: the job goes back to the queue.
    Interrupted,
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, HandlerError>> + Send>>;
type AsyncFn = dyn Fn(TaskContext, Value) -> HandlerFuture + Send + Sync;
type BlockingFn = dyn Fn(TaskContext, Value) -> Result<Value, HandlerError> + Send + Sync;
pub(crate) type Validator = dyn Fn(&Value) -> Result<(), String> + Send + Sync;

/// What runs a job.
#[derive(Clone)]
pub(crate) enum Handler {
    Async(Arc<AsyncFn>),
    Blocking(Arc<BlockingFn>),
    Shell(ShellCommand),
}

impl Handler {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Handler::Async(_) => "async",
            Handler::Blocking(_) => "blocking",
            Handler::Shell(_) => "shell",
        }
    }
}

/// A registered task: its name, handler, validated options.
#[derive(Clone)]
pub struct TaskDef {
    pub(crate) name: Arc<str>,
    pub(crate) handler: Handler,
    pub(crate) options: TaskOptions,
    pub(crate) exclusive: Option<Template>,
    pub(crate) validate: Option<Arc<Validator>>,
}

impl fmt::Debug for TaskDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskDef")
            .field("name", &self.name)
            .field("kind", &self.handler.kind())
            .field("options", &self.options)
            .finish()
    }
}

impl TaskDef {
    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `async`, `blocking` or `shell`.
    pub fn kind(&self) -> &'static str {
        self.handler.kind()
    }
    /// Its options.
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }
    /// The shell command, for shell tasks.
    pub fn command(&self) -> Option<&str> {
        match &self.handler {
            Handler::Shell(cmd) => Some(cmd.template().source()),
            _ => None,
        }
    }
}

/// A typed reference to a registered task: submitting through it is checked by the compiler.
///
/// `A` is the argument type, `O` the result type.
pub struct TaskRef<A, O> {
    pub(crate) name: Arc<str>,
    _types: PhantomData<fn(A) -> O>,
}

impl<A, O> TaskRef<A, O> {
    pub(crate) fn new(name: Arc<str>) -> Self {
        TaskRef {
            name,
            _types: PhantomData,
        }
    }
    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<A, O> Clone for TaskRef<A, O> {
    fn clone(&self) -> Self {
        TaskRef::new(self.name.clone())
    }
}

impl<A, O> fmt::Debug for TaskRef<A, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskRef({})", self.name)
    }
}

fn serialize_output<O: Serialize>(output: O) -> Result<Value, HandlerError> {
    serde_json::to_value(output)
        .map_err(|err| HandlerError::Failed(format!("result does not serialize: {err}")))
}

fn deserialize_args<A: DeserializeOwned>(task: &str, args: Value) -> Result<A, HandlerError> {
    serde_json::from_value(args)
        .map_err(|err| HandlerError::Failed(format!("invalid arguments for task `{task}`: {err}")))
}

pub(crate) fn validator<A: DeserializeOwned>() -> Arc<Validator> {
    Arc::new(|value: &Value| {
        A::deserialize(value)
            .map(drop)
            .map_err(|err| err.to_string())
    })
}

pub(crate) fn async_handler<A, O, E, F, Fut>(name: Arc<str>, f: F) -> Handler
where
    F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    A: DeserializeOwned + Send + 'static,
    O: Serialize + 'static,
    E: fmt::Display + 'static,
{
    Handler::Async(Arc::new(move |ctx, args| {
        let args = match deserialize_args::<A>(&name, args) {
            Ok(args) => args,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        let fut = f(ctx.clone(), args);
        Box::pin(async move {
            match fut.await {
                Ok(output) => serialize_output(output),
                Err(_) if ctx.is_cancel_requested() => Err(HandlerError::Cancelled),
                Err(err) => Err(failure(err)),
            }
        })
    }))
}

pub(crate) fn blocking_handler<A, O, E, F>(name: Arc<str>, f: F) -> Handler
where
    F: Fn(TaskContext, A) -> Result<O, E> + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    O: Serialize + 'static,
    E: fmt::Display + 'static,
{
    Handler::Blocking(Arc::new(move |ctx, args| {
        let args = deserialize_args::<A>(&name, args)?;
        match f(ctx.clone(), args) {
            Ok(output) => serialize_output(output),
            Err(_) if ctx.is_cancel_requested() => Err(HandlerError::Cancelled),
            Err(err) => Err(failure(err)),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_grows_and_caps_with_jitter_in_range() {
        let backoff = Backoff::exponential(Duration::from_secs(2), Duration::from_secs(10));
        for _ in 0..50 {
            let d = backoff.delay(2);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
                "{d:?}"
            );
            let capped = backoff.delay(20);
            assert!(capped >= Duration::from_secs(5) && capped <= Duration::from_secs(10));
        }
    }
}
