//! Settings, layered as TLO's README says: explicit builder values > `TLO_*` environment
//! variables > defaults.
//!
//! ```
//! use std::time::Duration;
//! let settings = tlo::Settings::builder()
//!     .concurrency(8)
//!     .tick_interval(Duration::from_millis(250))
//!     .build_with_env(|name| (name == "TLO_DEFAULT_QUEUE").then(|| "jobs".to_string()))
//!     .unwrap();
//! assert_eq!((settings.concurrency, settings.default_queue.as_str()), (8, "jobs"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tlo_core::{Error, Result};

macro_rules! kind {
    ($(#[$doc:meta])* $name:ident, $var:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            #[default]
            $($(#[$vdoc])* $variant),+
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($name::$variant => $text),+ })
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(value: &str) -> Result<Self> {
                $(
                    if value.eq_ignore_ascii_case($text) $(|| value.eq_ignore_ascii_case($alias))* {
                        return Ok($name::$variant);
                    }
                )+
                Err(Error::InvalidSetting {
                    name: $var.into(),
                    value: value.into(),
                    expected: format!("one of {}", [$($text $(, $alias)*),+].join(", ")),
                })
            }
        }
    };
}

kind!(
    /// What happens to work when the orchestrator stops (`TLO_STOP_BEHAVIOR`).
    StopBehavior, "TLO_STOP_BEHAVIOR", {
        /// Finish what runs and what is already due; later jobs stay scheduled.
        Drain => "Drain",
        /// Cancel what runs here (and queued jobs of a store no other process shares).
        Cancel => "Cancel",
        /// Stop taking work; leave the queue as it is.
        Ignore => "Ignore",
    }
);

kind!(
    /// Which store holds jobs (`TLO_TASK_STATE_STORE`).
    StoreKind, "TLO_TASK_STATE_STORE", {
        /// In memory: tests and prototypes.
        Memory => "memory" | "InMemoryTaskStateStore",
        /// An SQLite file.
        Sqlite => "sqlite",
        /// A PostgreSQL database.
        Postgres => "postgres" | "postgresql",
    }
);

kind!(
    /// Which task registry is used (`TLO_TASK_REGISTRY`).
    RegistryKind, "TLO_TASK_REGISTRY", {
        /// The in-process registry.
        Memory => "memory" | "InMemoryTaskRegistry",
    }
);

kind!(
    /// Where queues live (`TLO_QUEUE`): in tlo they are part of the store.
    QueueKind, "TLO_QUEUE", {
        /// Queues are columns of the job store (TLO's `MapQueue` maps here).
        Store => "store" | "MapQueue" | "memory",
    }
);

kind!(
    /// Which locker guards exclusivity keys (`TLO_LOCKER`).
    LockerKind, "TLO_LOCKER", {
        /// The store's own: in-process for the memory store, lock rows for durable stores.
        Auto => "auto",
        /// In-process locks.
        Memory => "memory" | "InMemoryLocker",
        /// Lock rows in the shared store (durable stores).
        Store => "store",
    }
);

/// Resolved settings; immutable once built.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `TLO_TASK_REGISTRY`.
    pub task_registry: RegistryKind,
    /// `TLO_TASK_STATE_STORE`.
    pub store: StoreKind,
    /// `TLO_QUEUE`.
    pub queue: QueueKind,
    /// `TLO_LOCKER`.
    pub locker: LockerKind,
    /// `TLO_TICK_INTERVAL`: scheduler tick, and the put-back delay of a job whose lock is held.
    pub tick_interval: Duration,
    /// `TLO_DEFAULT_QUEUE`.
    pub default_queue: String,
    /// `TLO_STOP_BEHAVIOR`.
    pub stop_behavior: StopBehavior,
    /// `TLO_PANIC_MODE`: a scheduler error stops the orchestrator.
    pub panic_mode: bool,
    /// `TLO_DATABASE_URL`.
    pub database_url: Option<String>,
    /// `TLO_DATABASE_SCHEMA`: the PostgreSQL schema holding tlo's tables (default `tlo`).
    pub database_schema: String,
    /// `TLO_MIGRATE`: apply pending migrations when connecting (default true; `tlo migrate`
    /// always does).
    pub migrate: bool,
    /// `TLO_POSTGRES_LISTEN`: wake workers by PostgreSQL's LISTEN/NOTIFY (default true); false
    /// polls only (`TLO_POLL_INTERVAL_MS`).
    pub postgres_listen: bool,
    /// `TLO_CONCURRENCY`: jobs running at once in this process.
    pub concurrency: usize,
    /// `TLO_QUEUE_CONCURRENCY`: per-queue caps.
    pub queue_concurrency: BTreeMap<String, usize>,
    /// `TLO_QUEUES`: queues served (empty: the default queue and every queue tasks name).
    pub queues: Vec<String>,
    /// `TLO_BLOCKING_THREADS`: bound of the blocking-handler pool.
    pub blocking_threads: usize,
    /// `TLO_CANCEL_GRACE_MS`.
    pub cancel_grace: Duration,
    /// `TLO_PROGRESS_FLUSH_INTERVAL_MS`.
    pub progress_flush_interval: Duration,
    /// `TLO_LEASE_SECS`.
    pub lease: Duration,
    /// `TLO_POLL_INTERVAL_MS`.
    pub poll_interval: Duration,
    /// `TLO_WORKER_ID`.
    pub worker_id: Option<String>,
    /// `TLO_RETAIN_DONE_SECS`: how long `done` jobs are kept (`None`: forever).
    pub retain_done: Option<Duration>,
    /// `TLO_RETAIN_FAILED_SECS`: how long `failed` jobs are kept.
    pub retain_failed: Option<Duration>,
    /// `TLO_RETAIN_CANCELLED_SECS`: how long `cancelled` jobs are kept.
    pub retain_cancelled: Option<Duration>,
    /// `TLO_RETAIN_SKIPPED_SECS`: how long `skipped` jobs are kept.
    pub retain_skipped: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            task_registry: RegistryKind::default(),
            store: StoreKind::default(),
            queue: QueueKind::default(),
            locker: LockerKind::default(),
            tick_interval: Duration::from_secs(1),
            default_queue: "default".into(),
            stop_behavior: StopBehavior::default(),
            panic_mode: false,
            database_url: None,
            database_schema: "tlo".into(),
            migrate: true,
            postgres_listen: true,
            concurrency: 16,
            queue_concurrency: BTreeMap::new(),
            queues: Vec::new(),
            blocking_threads: 16,
            cancel_grace: Duration::from_secs(5),
            progress_flush_interval: Duration::from_millis(100),
            lease: Duration::from_secs(20),
            poll_interval: Duration::from_secs(1),
            worker_id: None,
            retain_done: Some(Duration::from_secs(DAY)),
            retain_failed: Some(Duration::from_secs(7 * DAY)),
            retain_cancelled: Some(Duration::from_secs(DAY)),
            retain_skipped: Some(Duration::from_secs(DAY)),
        }
    }
}

const DAY: u64 = 86_400;

impl Settings {
    /// How often a running orchestrator renews its leases: also how soon a cancel requested in
    /// another process reaches a job running here.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        (self.lease / 3).min(Duration::from_millis(500))
    }

    /// How often the orchestrator looks for jobs whose lease ran out (their worker vanished).
    pub(crate) fn rescue_interval(&self) -> Duration {
        (self.lease / 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The longest a job waits to be rescued after its worker vanished (a crash, `kill -9`, a
    /// lost host): its lease runs out, then the next rescue pass of any orchestrator on the
    /// store puts it back. 25 s by default (a 20 s lease, a pass every 5 s).
    ///
    /// ```
    /// let settings = tlo::Settings::default();
    /// assert!(settings.rescue_within() <= std::time::Duration::from_secs(30));
    /// ```
    pub fn rescue_within(&self) -> Duration {
        self.lease + self.rescue_interval()
    }

    /// How long jobs that ended in `state` are kept; `None` for active states and "forever".
    pub fn retention(&self, state: tlo_core::JobState) -> Option<Duration> {
        use tlo_core::JobState::*;
        match state {
            Done => self.retain_done,
            Failed => self.retain_failed,
            Cancelled => self.retain_cancelled,
            Skipped => self.retain_skipped,
            _ => None,
        }
    }

    /// A builder.
    pub fn builder() -> SettingsBuilder {
        SettingsBuilder::default()
    }

    /// Defaults overridden by `TLO_*` variables.
    pub fn from_env() -> Result<Settings> {
        SettingsBuilder::default().build()
    }

    /// Every variable understood: name, default, meaning.
    pub const VARIABLES: &'static [(&'static str, &'static str, &'static str)] = &[
        ("TLO_TASK_REGISTRY", "memory", "task registry"),
        (
            "TLO_TASK_STATE_STORE",
            "memory",
            "store: memory, sqlite, postgres",
        ),
        ("TLO_QUEUE", "store", "where queues live"),
        (
            "TLO_LOCKER",
            "auto",
            "exclusivity locker: auto (the store's), memory, store",
        ),
        (
            "TLO_TICK_INTERVAL",
            "1.0",
            "seconds between scheduler ticks",
        ),
        (
            "TLO_DEFAULT_QUEUE",
            "default",
            "queue for tasks that name none",
        ),
        ("TLO_STOP_BEHAVIOR", "Drain", "Drain, Cancel or Ignore"),
        (
            "TLO_PANIC_MODE",
            "false",
            "scheduler errors stop the orchestrator",
        ),
        ("TLO_DATABASE_URL", "", "store URL"),
        (
            "TLO_DATABASE_SCHEMA",
            "tlo",
            "PostgreSQL schema of tlo's tables",
        ),
        (
            "TLO_MIGRATE",
            "true",
            "apply pending migrations when connecting",
        ),
        (
            "TLO_POSTGRES_LISTEN",
            "true",
            "wake workers by LISTEN/NOTIFY (false: poll only)",
        ),
        ("TLO_CONCURRENCY", "16", "jobs running at once"),
        (
            "TLO_QUEUE_CONCURRENCY",
            "",
            "per-queue caps: emails=2,reports=1",
        ),
        ("TLO_QUEUES", "", "queues served, comma-separated"),
        ("TLO_BLOCKING_THREADS", "16", "blocking-handler threads"),
        ("TLO_CANCEL_GRACE_MS", "5000", "cancellation grace period"),
        (
            "TLO_PROGRESS_FLUSH_INTERVAL_MS",
            "100",
            "progress flush interval",
        ),
        (
            "TLO_LEASE_SECS",
            "20",
            "job lease: a vanished worker's jobs are rescued within lease + 5 s",
        ),
        ("TLO_POLL_INTERVAL_MS", "1000", "fallback poll interval"),
        ("TLO_WORKER_ID", "host:pid", "this worker's id"),
        (
            "TLO_RETAIN_DONE_SECS",
            "86400",
            "keep done jobs this long (forever: never pruned)",
        ),
        (
            "TLO_RETAIN_FAILED_SECS",
            "604800",
            "keep failed jobs this long",
        ),
        (
            "TLO_RETAIN_CANCELLED_SECS",
            "86400",
            "keep cancelled jobs this long",
        ),
        (
            "TLO_RETAIN_SKIPPED_SECS",
            "86400",
            "keep skipped jobs this long",
        ),
    ];
}

mod builder;
mod parse;

pub use builder::SettingsBuilder;

#[cfg(test)]
mod tests;
