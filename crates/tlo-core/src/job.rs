//! Jobs: one execution of a task with JSON arguments.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Error, JobState};

/// A job's id: a UUID v7, so ids sort by creation time.
///
/// ```
/// let a = tlo_core::JobId::new();
/// let b = tlo_core::JobId::new();
/// assert!(a < b);
/// assert_eq!(a.to_string().parse::<tlo_core::JobId>().unwrap(), a);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

/// The unique-key prefix of processes: jobs that live until deleted, never pruned.
pub const PROCESS_KEY_PREFIX: &str = "process:";

impl JobId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }

    /// The id of the process named `name`: the same on every host and in every run, so a
    /// process is found by its name without a lookup table.
    ///
    /// ```
    /// use tlo_core::JobId;
    /// assert_eq!(JobId::for_process("nightly-report"), JobId::for_process("nightly-report"));
    /// assert_ne!(JobId::for_process("a"), JobId::for_process("b"));
    /// ```
    pub fn for_process(name: &str) -> Self {
        // A fixed namespace for tlo process names (a random v4, chosen once).
        const PROCESSES: Uuid = Uuid::from_u128(0x6f1c_2a4e_93d7_4b0e_9a52_1c7e_5d08_b3f4);
        JobId(Uuid::new_v5(&PROCESSES, name.as_bytes()))
    }

    /// The id of the part `name` of job `self` (a workflow run's node, say): the same for the
    /// same pair, so whoever knows the job knows its parts' ids (UUID v5 in `self`'s namespace).
    ///
    /// ```
    /// use tlo_core::JobId;
    /// let run = JobId::new();
    /// assert_eq!(run.derive("extract"), run.derive("extract"));
    /// assert_ne!(run.derive("extract"), JobId::new().derive("extract"));
    /// ```
    pub fn derive(self, name: &str) -> Self {
        JobId(Uuid::new_v5(&self.0, name.as_bytes()))
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Uuid::parse_str(s)
            .map(JobId)
            .map_err(|err| Error::InvalidSetting {
                name: "job id".into(),
                value: s.into(),
                expected: format!("a UUID ({err})"),
            })
    }
}

/// Progress of a running job: a percentage (or indeterminate) and a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0.0 to 100.0, or `None` when indeterminate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// What the job is doing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Progress {
    /// Whether nothing was reported: no percentage, no message.
    pub fn is_empty(&self) -> bool {
        self.percent.is_none() && self.message.is_none()
    }
}

/// How loud a log line is (optio's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Fine-grained detail.
    Debug,
    /// Normal information (a subprocess's stdout).
    Info,
    /// A notable event in the job's life.
    Event,
    /// Something odd (a subprocess's stderr).
    Warning,
    /// An error.
    Error,
}

impl LogLevel {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Event => "event",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When it was written.
    #[serde(with = "crate::timestamp::rfc3339")]
    pub at: DateTime<Utc>,
    /// How loud it is.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// The attempt that wrote it.
    pub attempt: u32,
}

/// What happened in one attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1-based attempt number.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// When the attempt started.
    #[serde(with = "crate::timestamp::rfc3339")]
    pub started_at: DateTime<Utc>,
    /// When it ended (`None` while running).
    #[serde(
        default,
        with = "crate::timestamp::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended (`None` while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<JobState>,
    /// Its error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A job as stored: everything there is to know about one execution of a task.
///
/// As JSON, fields that hold nothing (`null`, empty, zero, `cancellable: true`) are left out,
/// and read back as such: stores keep a few hundred bytes less of every job, and every write
/// of it is that much cheaper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The task it runs.
    pub task: String,
    /// The queue it waits in.
    pub queue: String,
    /// Its JSON arguments.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub args: Value,
    /// Its state.
    pub state: JobState,
    /// Higher runs first among due jobs.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    /// The current attempt (0 before the first claim).
    pub attempt: u32,
    /// How many attempts it may make in all.
    pub max_attempts: u32,
    /// Each attempt's record, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    /// Not claimed before this instant.
    #[serde(with = "crate::timestamp::rfc3339")]
    pub eta: DateTime<Utc>,
    /// When it was submitted.
    #[serde(with = "crate::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When the current (or last) attempt started.
    #[serde(
        default,
        with = "crate::timestamp::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached an end state.
    #[serde(
        default,
        with = "crate::timestamp::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<DateTime<Utc>>,
    /// Its progress.
    #[serde(default, skip_serializing_if = "Progress::is_empty")]
    pub progress: Progress,
    /// Its result once `done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Its last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// User metadata (AND-matched by filters).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// A user-chosen unique key (a process id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// The exclusivity lock key rendered from the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_key: Option<String>,
    /// Whether a cancel is accepted while it runs.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub cancellable: bool,
    /// The job that spawned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<JobId>,
    /// The root of its tree (itself for a top-level job).
    pub root: JobId,
    /// Depth in its tree (0 at the root).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub depth: u32,
    /// Order among its siblings.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub order: u32,
    /// The worker holding it while it executes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The worker's lease ends here unless renewed.
    #[serde(
        default,
        with = "crate::timestamp::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_until: Option<DateTime<Utc>>,
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

impl Job {
    /// Time between the start of the last attempt and the end, once ended.
    pub fn duration(&self) -> Option<Duration> {
        let (start, end) = (self.started_at?, self.finished_at?);
        (end - start).to_std().ok()
    }

    /// Whether the metadata contains every `(key, value)` of `filter`.
    pub fn metadata_matches(&self, filter: &Map<String, Value>) -> bool {
        filter
            .iter()
            .all(|(key, value)| self.metadata.get(key) == Some(value))
    }
}

/// What a submitter hands the store: a job before it exists.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Its id (chosen by the submitter so the handle exists before the write).
    pub id: JobId,
    /// The task.
    pub task: String,
    /// The queue.
    pub queue: String,
    /// JSON arguments.
    pub args: Value,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts in all (at least 1).
    pub max_attempts: u32,
    /// Not before.
    pub eta: DateTime<Utc>,
    /// User metadata.
    pub metadata: Map<String, Value>,
    /// A unique key: when a job with this key exists, that job is returned instead.
    pub unique_key: Option<String>,
    /// The rendered exclusivity key.
    pub lock_key: Option<String>,
    /// Whether a cancel is accepted while it runs.
    pub cancellable: bool,
    /// The parent job, for child jobs.
    pub parent: Option<JobId>,
    /// Root of the tree (the id itself for top-level jobs).
    pub root: JobId,
    /// Depth in the tree.
    pub depth: u32,
    /// Order among siblings.
    pub order: u32,
    /// `Idle` for a defined-but-not-launched process, else `Scheduled`.
    pub state: JobState,
}

impl NewJob {
    /// A scheduled top-level job of `task` with `args`, due now, on queue `default`.
    pub fn new(task: impl Into<String>, args: Value) -> Self {
        let id = JobId::new();
        NewJob {
            id,
            task: task.into(),
            queue: "default".into(),
            args,
            priority: 0,
            max_attempts: 1,
            eta: Utc::now(),
            metadata: Map::new(),
            unique_key: None,
            lock_key: None,
            cancellable: true,
            parent: None,
            root: id,
            depth: 0,
            order: 0,
            state: JobState::Scheduled,
        }
    }

    /// Turns the submission into a stored job record.
    pub fn into_job(self, now: DateTime<Utc>) -> Job {
        Job {
            id: self.id,
            task: self.task,
            queue: self.queue,
            args: self.args,
            state: self.state,
            priority: self.priority,
            attempt: 0,
            max_attempts: self.max_attempts.max(1),
            attempts: Vec::new(),
            eta: self.eta,
            created_at: now,
            started_at: None,
            finished_at: None,
            progress: Progress::default(),
            result: None,
            error: None,
            metadata: self.metadata,
            unique_key: self.unique_key,
            lock_key: self.lock_key,
            cancellable: self.cancellable,
            parent: self.parent,
            root: self.root,
            depth: self.depth,
            order: self.order,
            worker: None,
            lease_until: None,
        }
    }
}

/// Which jobs a listing returns: every set field must match (AND).
///
/// ```
/// use tlo_core::{JobFilter, JobState};
/// let filter = JobFilter::default().state(JobState::Failed).task("send_email").limit(10);
/// assert_eq!(filter.states, vec![JobState::Failed]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Any of these states (empty: any state).
    pub states: Vec<JobState>,
    /// This task.
    pub task: Option<String>,
    /// This queue.
    pub queue: Option<String>,
    /// Metadata containing all of these pairs.
    pub metadata: Map<String, Value>,
    /// Children of this job.
    pub parent: Option<JobId>,
    /// Members of this tree.
    pub root: Option<JobId>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl JobFilter {
    /// Adds a state to match.
    pub fn state(mut self, state: JobState) -> Self {
        self.states.push(state);
        self
    }
    /// Restricts to a task.
    pub fn task(mut self, task: impl Into<String>) -> Self {
        self.task = Some(task.into());
        self
    }
    /// Restricts to a queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
    /// Requires a metadata pair.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Restricts to children of `parent`.
    pub fn parent(mut self, parent: JobId) -> Self {
        self.parent = Some(parent);
        self
    }
    /// Restricts to the tree rooted at `root`.
    pub fn root(mut self, root: JobId) -> Self {
        self.root = Some(root);
        self
    }
    /// Caps the number of results.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether `job` passes this filter (limit aside).
    pub fn matches(&self, job: &Job) -> bool {
        (self.states.is_empty() || self.states.contains(&job.state))
            && self.task.as_deref().is_none_or(|t| t == job.task)
            && self.queue.as_deref().is_none_or(|q| q == job.queue)
            && self.parent.is_none_or(|p| job.parent == Some(p))
            && self.root.is_none_or(|r| job.root == r)
            && job.metadata_matches(&self.metadata)
    }
}

/// A hasher for [`JobId`] keys: a UUID v7 ends in 62 random bits, so those bits are the hash.
/// Much cheaper than SipHash on the hot paths of stores and workers; not for untrusted keys
/// of other shapes.
#[derive(Debug, Default, Clone, Copy)]
pub struct JobIdHasher(u64);

impl std::hash::Hasher for JobIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            // Rotate-xor keeps every byte's influence when more than 8 bytes arrive.
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }
}

/// A `HashMap` keyed by [`JobId`] with [`JobIdHasher`].
pub type JobIdMap<V> =
    std::collections::HashMap<JobId, V, std::hash::BuildHasherDefault<JobIdHasher>>;

/// A `HashSet` of [`JobId`] with [`JobIdHasher`].
pub type JobIdSet = std::collections::HashSet<JobId, std::hash::BuildHasherDefault<JobIdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transition::{apply_claim, apply_completion};
    use crate::{Completion, Outcome};
    use serde_json::json;

    fn encoded(job: &Job) -> Value {
        serde_json::from_str(&serde_json::to_string(job).unwrap()).unwrap()
    }

    #[test]
    fn a_new_job_is_stored_without_the_fields_that_hold_nothing() {
        let job = NewJob::new("noop", Value::Null).into_job(Utc::now());
        let fields: Vec<String> = encoded(&job).as_object().unwrap().keys().cloned().collect();
        // (In key order.)
        assert_eq!(
            fields,
            [
                "attempt",
                "created_at",
                "eta",
                "id",
                "max_attempts",
                "queue",
                "root",
                "state",
                "task"
            ],
        );
        let back: Job = serde_json::from_value(encoded(&job)).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn every_field_that_holds_something_is_stored_and_read_back() {
        let mut new = NewJob::new("t", json!({"n": 1}));
        new.priority = -3;
        new.cancellable = false;
        new.unique_key = Some("u".into());
        new.lock_key = Some("k".into());
        new.parent = Some(JobId::new());
        new.depth = 2;
        new.order = 5;
        new.metadata.insert("team".into(), json!("a"));
        let mut job = new.into_job(Utc::now());
        job.progress = Progress {
            percent: Some(40.0),
            message: Some("half".into()),
        };
        apply_claim(
            &mut job,
            "w1",
            Utc::now(),
            std::time::Duration::from_secs(9),
        )
        .unwrap();
        let attempt = job.attempt;
        let completion = Completion {
            id: job.id,
            attempt,
            outcome: Outcome::Failed {
                error: "boom".into(),
                retry_at: None,
            },
            at: Utc::now(),
        };
        apply_completion(&mut job, &completion).unwrap();
        let back: Job = serde_json::from_value(encoded(&job)).unwrap();
        assert_eq!(back, job);
        assert_eq!(encoded(&job)["cancellable"], json!(false));
        assert_eq!(encoded(&job)["attempts"][0]["error"], json!("boom"));
    }

    #[test]
    fn documents_written_with_every_field_spelled_out_still_read() {
        // As builds before the compact encoding wrote them.
        let job = NewJob::new("noop", Value::Null).into_job(Utc::now());
        let mut full = encoded(&job);
        let spelled = json!({
            "args": null, "priority": 0, "attempts": [], "started_at": null,
            "finished_at": null, "progress": {"percent": null, "message": null},
            "result": null, "error": null, "metadata": {}, "unique_key": null,
            "lock_key": null, "cancellable": true, "parent": null, "depth": 0, "order": 0,
            "worker": null, "lease_until": null
        });
        for (key, value) in spelled.as_object().unwrap() {
            full[key] = value.clone();
        }
        let back: Job = serde_json::from_value(full).unwrap();
        assert_eq!(back, job);
    }
}
