//! The one error type of tlo.

use crate::{JobId, JobState};

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tlo, each variant naming what was wrong.
///
/// ```
/// use tlo_core::{Error, JobState};
/// let err = Error::IllegalTransition {
///     job: tlo_core::JobId::new(),
///     from: JobState::Done,
///     to: JobState::Running,
/// };
/// assert!(err.to_string().contains("done -> running"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A task with this name is already registered.
    #[error("task `{0}` is already registered")]
    DuplicateTask(String),
    /// No task with this name is registered.
    #[error("unknown task `{0}`")]
    UnknownTask(String),
    /// The arguments do not fit the task's argument type.
    #[error("invalid arguments for task `{task}`: {message}")]
    InvalidArguments {
        /// The task name.
        task: String,
        /// What serde said.
        message: String,
    },
    /// A template (exclusivity key or shell command) names an argument the job does not have.
    #[error("template `{template}` of task `{task}` names missing argument `{missing}`")]
    MissingTemplateArgument {
        /// The task name.
        task: String,
        /// The template text.
        template: String,
        /// The missing argument name.
        missing: String,
    },
    /// A template is malformed (an unclosed `{`, an empty name, ...).
    #[error("invalid template `{template}`: {message}")]
    InvalidTemplate {
        /// The template text.
        template: String,
        /// What is wrong with it.
        message: String,
    },
    /// No job with this id exists.
    #[error("job {0} not found")]
    JobNotFound(JobId),
    /// The state machine refuses this transition.
    #[error("job {job}: illegal transition {from} -> {to}")]
    IllegalTransition {
        /// The job.
        job: JobId,
        /// Its current state.
        from: JobState,
        /// The refused target state.
        to: JobState,
    },
    /// A write was fenced off: the job has moved on to another attempt (or another worker).
    #[error("job {job}: stale write for attempt {attempt}, job is at attempt {current}")]
    StaleAttempt {
        /// The job.
        job: JobId,
        /// The attempt the writer holds.
        attempt: u32,
        /// The job's current attempt.
        current: u32,
    },
    /// Only idle or ended jobs can be deleted; this one is active.
    #[error("job {job} is {state}: only idle or ended jobs can be deleted")]
    ActiveJob {
        /// The job.
        job: JobId,
        /// Its state.
        state: crate::JobState,
    },
    /// The task of this job was registered as not cancellable.
    #[error("job {0} is not cancellable")]
    NotCancellable(JobId),
    /// A setting has a value outside its accepted set.
    #[error("invalid value `{value}` for {name}: expected {expected}")]
    InvalidSetting {
        /// The setting or environment variable name, e.g. `TLO_STOP_BEHAVIOR`.
        name: String,
        /// The rejected value.
        value: String,
        /// The accepted values or format.
        expected: String,
    },
    /// A schedule (cron pattern, interval or time zone) is invalid.
    #[error("invalid schedule `{schedule}`: {message}")]
    InvalidSchedule {
        /// The schedule text.
        schedule: String,
        /// What is wrong with it.
        message: String,
    },
    /// A workflow's dependencies form a cycle; `nodes` walks it, first node repeated last.
    #[error("workflow `{workflow}` has a cycle: {}", nodes.join(" -> "))]
    WorkflowCycle {
        /// The workflow.
        workflow: String,
        /// The nodes on the cycle, in order, the first repeated at the end.
        nodes: Vec<String>,
    },
    /// A workflow node depends on a node the workflow does not have.
    #[error("workflow `{workflow}`: node `{node}` depends on missing node `{dependency}`")]
    MissingDependency {
        /// The workflow.
        workflow: String,
        /// The node with the dependency.
        node: String,
        /// The missing node.
        dependency: String,
    },
    /// Two workflow nodes share a name.
    #[error("workflow `{workflow}`: node `{node}` is defined twice")]
    DuplicateNode {
        /// The workflow.
        workflow: String,
        /// The duplicated name.
        node: String,
    },
    /// A job ended in `failed`; carries its last error.
    #[error("job {job} failed: {error}")]
    JobFailed {
        /// The job.
        job: JobId,
        /// The job's error message.
        error: String,
    },
    /// A job ended in `cancelled`.
    #[error("job {0} was cancelled")]
    JobCancelled(JobId),
    /// A job ended in `skipped`.
    #[error("job {0} was skipped")]
    JobSkipped(JobId),
    /// A result could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(serde_json::Error),
    /// The orchestrator is not running or has stopped.
    #[error("orchestrator is shut down")]
    Shutdown,
    /// The storage backend failed. Its message is part of this error's own (not a `source`,
    /// which error reporters would print a second time).
    #[error("store: {0}")]
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// An I/O error (spawning a subprocess, reading a file, ...).
    #[error("io: {0}")]
    Io(std::io::Error),
}

// By hand rather than `#[from]`, which would also make the wrapped error a `source`: its
// message, already in ours, would then be printed twice by error reporters.
impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Serialization(err)
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(err)
    }
}

impl Error {
    /// Wraps a backend error as [`Error::Store`].
    pub fn store(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Store(err.into())
    }
}
