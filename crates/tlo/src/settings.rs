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

/// Explicit settings; unset fields come from `TLO_*` variables, then defaults.
#[derive(Debug, Clone, Default)]
pub struct SettingsBuilder {
    explicit: BTreeMap<&'static str, String>,
    typed: Settings,
    set_typed: Vec<&'static str>,
}

fn invalid(name: &str, value: &str, expected: &str) -> Error {
    Error::InvalidSetting {
        name: name.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

fn positive_usize(name: &str, value: &str) -> Result<usize> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(name, value, "a whole number >= 1"))
}

fn millis(name: &str, value: &str) -> Result<Duration> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| invalid(name, value, "a whole number of milliseconds"))
}

fn positive_secs(name: &str, value: &str) -> Result<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| invalid(name, value, "a number of seconds > 0"))
}

fn boolean(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            name,
            value,
            "true or false (also 1/0, yes/no, on/off)",
        )),
    }
}

fn retention(name: &str, value: &str) -> Result<Option<Duration>> {
    if value.trim().eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    value
        .trim()
        .parse::<u64>()
        .map(|secs| Some(Duration::from_secs(secs)))
        .map_err(|_| invalid(name, value, "a whole number of seconds, or forever"))
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn queue_caps(name: &str, value: &str) -> Result<BTreeMap<String, usize>> {
    let mut caps = BTreeMap::new();
    for item in list(value) {
        let (queue, cap) = item
            .split_once('=')
            .ok_or_else(|| invalid(name, value, "queue=limit pairs, e.g. emails=2,reports=1"))?;
        let cap = positive_usize(name, cap)?;
        caps.insert(queue.trim().to_owned(), cap);
    }
    Ok(caps)
}

/// Applies one variable's text to `settings`.
fn apply(settings: &mut Settings, var: &str, value: &str) -> Result<()> {
    match var {
        "TLO_TASK_REGISTRY" => settings.task_registry = value.trim().parse()?,
        "TLO_TASK_STATE_STORE" => settings.store = value.trim().parse()?,
        "TLO_QUEUE" => settings.queue = value.trim().parse()?,
        "TLO_LOCKER" => settings.locker = value.trim().parse()?,
        "TLO_TICK_INTERVAL" => settings.tick_interval = positive_secs(var, value)?,
        "TLO_DEFAULT_QUEUE" => {
            let queue = value.trim();
            if queue.is_empty() {
                return Err(invalid(var, value, "a non-empty queue name"));
            }
            settings.default_queue = queue.to_owned();
        }
        "TLO_STOP_BEHAVIOR" => settings.stop_behavior = value.trim().parse()?,
        "TLO_PANIC_MODE" => settings.panic_mode = boolean(var, value)?,
        "TLO_DATABASE_URL" => settings.database_url = Some(value.trim().to_owned()),
        "TLO_DATABASE_SCHEMA" => settings.database_schema = value.trim().to_owned(),
        "TLO_MIGRATE" => settings.migrate = boolean(var, value)?,
        "TLO_CONCURRENCY" => settings.concurrency = positive_usize(var, value)?,
        "TLO_QUEUE_CONCURRENCY" => settings.queue_concurrency = queue_caps(var, value)?,
        "TLO_QUEUES" => settings.queues = list(value),
        "TLO_BLOCKING_THREADS" => settings.blocking_threads = positive_usize(var, value)?,
        "TLO_CANCEL_GRACE_MS" => settings.cancel_grace = millis(var, value)?,
        "TLO_PROGRESS_FLUSH_INTERVAL_MS" => {
            settings.progress_flush_interval = millis(var, value)?.max(Duration::from_millis(1))
        }
        "TLO_LEASE_SECS" => settings.lease = positive_secs(var, value)?,
        "TLO_POLL_INTERVAL_MS" => {
            settings.poll_interval = millis(var, value)?.max(Duration::from_millis(1))
        }
        "TLO_WORKER_ID" => settings.worker_id = Some(value.trim().to_owned()),
        "TLO_RETAIN_DONE_SECS" => settings.retain_done = retention(var, value)?,
        "TLO_RETAIN_FAILED_SECS" => settings.retain_failed = retention(var, value)?,
        "TLO_RETAIN_CANCELLED_SECS" => settings.retain_cancelled = retention(var, value)?,
        "TLO_RETAIN_SKIPPED_SECS" => settings.retain_skipped = retention(var, value)?,
        _ => return Err(unknown(var, value)),
    }
    Ok(())
}

fn unknown(key: &str, value: &str) -> Error {
    let known: Vec<&str> = Settings::VARIABLES
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    invalid(
        key,
        value,
        &format!("a known setting: {}", known.join(", ")),
    )
}

/// `concurrency` or `TLO_CONCURRENCY` -> `TLO_CONCURRENCY`.
fn variable(key: &str) -> Option<&'static str> {
    let upper = key.trim().to_ascii_uppercase();
    let upper = upper.strip_prefix("TLO_").unwrap_or(&upper).to_owned();
    Settings::VARIABLES
        .iter()
        .map(|(name, _, _)| *name)
        .find(|name| name[4..] == upper)
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty, $var:literal, |$s:ident, $v:ident| $body:expr) => {
        $(#[$doc])*
        pub fn $name(mut self, $v: $ty) -> Self {
            let $s = &mut self.typed;
            $body;
            self.set_typed.push($var);
            self
        }
    };
}

impl SettingsBuilder {
    setter!(/// Jobs running at once.
        concurrency: usize, "TLO_CONCURRENCY", |s, v| s.concurrency = v);
    setter!(/// Scheduler tick and exclusivity put-back delay.
        tick_interval: Duration, "TLO_TICK_INTERVAL", |s, v| s.tick_interval = v);
    setter!(/// Queue for tasks that name none.
        default_queue: impl Into<String>, "TLO_DEFAULT_QUEUE", |s, v| s.default_queue = v.into());
    setter!(/// Behaviour of [`crate::Tlo::stop`].
        stop_behavior: StopBehavior, "TLO_STOP_BEHAVIOR", |s, v| s.stop_behavior = v);
    setter!(/// Scheduler errors stop the orchestrator.
        panic_mode: bool, "TLO_PANIC_MODE", |s, v| s.panic_mode = v);
    setter!(/// The store to use.
        store: StoreKind, "TLO_TASK_STATE_STORE", |s, v| s.store = v);
    setter!(/// The task registry to use.
        task_registry: RegistryKind, "TLO_TASK_REGISTRY", |s, v| s.task_registry = v);
    setter!(/// Where queues live.
        queue: QueueKind, "TLO_QUEUE", |s, v| s.queue = v);
    setter!(/// The locker to use.
        locker: LockerKind, "TLO_LOCKER", |s, v| s.locker = v);
    setter!(/// The PostgreSQL schema.
        database_schema: impl Into<String>, "TLO_DATABASE_SCHEMA", |s, v| s.database_schema = v.into());
    setter!(/// Apply pending migrations when connecting.
        migrate: bool, "TLO_MIGRATE", |s, v| s.migrate = v);
    setter!(/// The store URL.
        database_url: impl Into<String>, "TLO_DATABASE_URL", |s, v| s.database_url = Some(v.into()));
    setter!(/// The queues this worker serves.
        queues: Vec<String>, "TLO_QUEUES", |s, v| s.queues = v);
    setter!(/// Bound of the blocking-handler pool.
        blocking_threads: usize, "TLO_BLOCKING_THREADS", |s, v| s.blocking_threads = v);
    setter!(/// Cancellation grace period.
        cancel_grace: Duration, "TLO_CANCEL_GRACE_MS", |s, v| s.cancel_grace = v);
    setter!(/// Progress and log flush interval.
        progress_flush_interval: Duration, "TLO_PROGRESS_FLUSH_INTERVAL_MS", |s, v| s.progress_flush_interval = v);
    setter!(/// Job lease.
        lease: Duration, "TLO_LEASE_SECS", |s, v| s.lease = v);
    setter!(/// Fallback poll interval.
        poll_interval: Duration, "TLO_POLL_INTERVAL_MS", |s, v| s.poll_interval = v);
    /// How long jobs that ended in `state` are kept (`None`: forever). Only end states apply.
    pub fn retain(mut self, state: tlo_core::JobState, keep: Option<Duration>) -> Self {
        use tlo_core::JobState::*;
        let (field, var) = match state {
            Done => (&mut self.typed.retain_done, "TLO_RETAIN_DONE_SECS"),
            Failed => (&mut self.typed.retain_failed, "TLO_RETAIN_FAILED_SECS"),
            Cancelled => (
                &mut self.typed.retain_cancelled,
                "TLO_RETAIN_CANCELLED_SECS",
            ),
            Skipped => (&mut self.typed.retain_skipped, "TLO_RETAIN_SKIPPED_SECS"),
            _ => return self,
        };
        *field = keep;
        self.set_typed.push(var);
        self
    }

    setter!(/// This worker's id.
        worker_id: impl Into<String>, "TLO_WORKER_ID", |s, v| s.worker_id = Some(v.into()));

    /// Caps one queue's running jobs (adds to earlier caps).
    pub fn queue_concurrency(mut self, queue: &str, limit: usize) -> Self {
        self.typed.queue_concurrency.insert(queue.to_owned(), limit);
        self.set_typed.push("TLO_QUEUE_CONCURRENCY");
        self
    }

    /// Sets a setting from its text by short key (`concurrency`) or variable name
    /// (`TLO_CONCURRENCY`), as config files do. The value is checked now.
    pub fn set(mut self, key: &str, value: &str) -> Result<Self> {
        let var = variable(key).ok_or_else(|| unknown(key, value))?;
        apply(&mut Settings::default(), var, value)?;
        self.explicit.insert(var, value.to_owned());
        Ok(self)
    }

    /// Resolves against the process environment.
    pub fn build(self) -> Result<Settings> {
        self.build_with_env(|name| std::env::var(name).ok())
    }

    /// Resolves against `env` (a lookup of variable names).
    pub fn build_with_env(self, env: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let mut settings = Settings::default();
        for (name, _, _) in Settings::VARIABLES {
            if self.set_typed.contains(name) || self.explicit.contains_key(name) {
                continue;
            }
            if let Some(value) = env(name).filter(|v| !v.trim().is_empty()) {
                apply(&mut settings, name, &value)?;
            }
        }
        for (name, value) in &self.explicit {
            apply(&mut settings, name, value)?;
        }
        let typed = &self.typed;
        for name in &self.set_typed {
            copy_field(&mut settings, typed, name);
        }
        validate(&settings)?;
        Ok(settings)
    }
}

fn copy_field(to: &mut Settings, from: &Settings, var: &str) {
    match var {
        "TLO_CONCURRENCY" => to.concurrency = from.concurrency,
        "TLO_TICK_INTERVAL" => to.tick_interval = from.tick_interval,
        "TLO_DEFAULT_QUEUE" => to.default_queue = from.default_queue.clone(),
        "TLO_STOP_BEHAVIOR" => to.stop_behavior = from.stop_behavior,
        "TLO_PANIC_MODE" => to.panic_mode = from.panic_mode,
        "TLO_TASK_STATE_STORE" => to.store = from.store,
        "TLO_TASK_REGISTRY" => to.task_registry = from.task_registry,
        "TLO_QUEUE" => to.queue = from.queue,
        "TLO_LOCKER" => to.locker = from.locker,
        "TLO_DATABASE_URL" => to.database_url = from.database_url.clone(),
        "TLO_DATABASE_SCHEMA" => to.database_schema = from.database_schema.clone(),
        "TLO_MIGRATE" => to.migrate = from.migrate,
        "TLO_QUEUE_CONCURRENCY" => to.queue_concurrency = from.queue_concurrency.clone(),
        "TLO_QUEUES" => to.queues = from.queues.clone(),
        "TLO_BLOCKING_THREADS" => to.blocking_threads = from.blocking_threads,
        "TLO_CANCEL_GRACE_MS" => to.cancel_grace = from.cancel_grace,
        "TLO_PROGRESS_FLUSH_INTERVAL_MS" => {
            to.progress_flush_interval = from.progress_flush_interval
        }
        "TLO_LEASE_SECS" => to.lease = from.lease,
        "TLO_POLL_INTERVAL_MS" => to.poll_interval = from.poll_interval,
        "TLO_WORKER_ID" => to.worker_id = from.worker_id.clone(),
        "TLO_RETAIN_DONE_SECS" => to.retain_done = from.retain_done,
        "TLO_RETAIN_FAILED_SECS" => to.retain_failed = from.retain_failed,
        "TLO_RETAIN_CANCELLED_SECS" => to.retain_cancelled = from.retain_cancelled,
        "TLO_RETAIN_SKIPPED_SECS" => to.retain_skipped = from.retain_skipped,
        _ => {}
    }
}

/// Checks values given through typed setters, which bypass text parsing.
fn validate(s: &Settings) -> Result<()> {
    let check = |ok: bool, name: &str, value: String, expected: &str| {
        if ok {
            Ok(())
        } else {
            Err(invalid(name, &value, expected))
        }
    };
    check(
        s.concurrency > 0,
        "TLO_CONCURRENCY",
        s.concurrency.to_string(),
        "a whole number >= 1",
    )?;
    check(
        s.blocking_threads > 0,
        "TLO_BLOCKING_THREADS",
        s.blocking_threads.to_string(),
        "a whole number >= 1",
    )?;
    check(
        !s.tick_interval.is_zero(),
        "TLO_TICK_INTERVAL",
        "0".into(),
        "a number of seconds > 0",
    )?;
    check(
        !s.lease.is_zero(),
        "TLO_LEASE_SECS",
        "0".into(),
        "a number of seconds > 0",
    )?;
    check(
        !s.default_queue.trim().is_empty(),
        "TLO_DEFAULT_QUEUE",
        String::new(),
        "a non-empty queue name",
    )?;
    check(
        !s.poll_interval.is_zero(),
        "TLO_POLL_INTERVAL_MS",
        "0".into(),
        "a whole number of milliseconds >= 1",
    )?;
    check(
        !s.progress_flush_interval.is_zero(),
        "TLO_PROGRESS_FLUSH_INTERVAL_MS",
        "0".into(),
        "a whole number of milliseconds >= 1",
    )?;
    for (queue, cap) in &s.queue_concurrency {
        check(
            *cap > 0,
            "TLO_QUEUE_CONCURRENCY",
            format!("{queue}=0"),
            "queue=limit pairs with limits >= 1",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        assert_eq!(
            SettingsBuilder::default().build_with_env(env(&[])).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn environment_overrides_defaults_and_builder_overrides_environment() {
        let vars = [
            ("TLO_CONCURRENCY", "4"),
            ("TLO_TICK_INTERVAL", "0.25"),
            ("TLO_STOP_BEHAVIOR", "cancel"),
            ("TLO_PANIC_MODE", "yes"),
            ("TLO_QUEUE_CONCURRENCY", "emails=2, reports=1"),
            ("TLO_QUEUE", "MapQueue"),
            ("TLO_TASK_STATE_STORE", "InMemoryTaskStateStore"),
            ("TLO_DEFAULT_QUEUE", ""),
        ];
        let s = SettingsBuilder::default()
            .build_with_env(env(&vars))
            .unwrap();
        assert_eq!(s.concurrency, 4);
        assert_eq!(s.tick_interval, Duration::from_millis(250));
        assert_eq!(s.stop_behavior, StopBehavior::Cancel);
        assert!(s.panic_mode);
        assert_eq!(s.queue_concurrency["emails"], 2);
        assert_eq!(s.default_queue, "default", "empty variable counts as unset");
        let s = SettingsBuilder::default()
            .concurrency(9)
            .set("stop_behavior", "Ignore")
            .unwrap()
            .build_with_env(env(&vars))
            .unwrap();
        assert_eq!((s.concurrency, s.stop_behavior), (9, StopBehavior::Ignore));
    }

    #[test]
    fn bad_values_name_the_variable_and_accepted_values() {
        let cases = [
            ("TLO_STOP_BEHAVIOR", "Explode", "Drain"),
            ("TLO_TASK_STATE_STORE", "redis", "sqlite"),
            ("TLO_TASK_REGISTRY", "x", "memory"),
            ("TLO_QUEUE", "x", "MapQueue"),
            ("TLO_LOCKER", "x", "InMemoryLocker"),
            ("TLO_TICK_INTERVAL", "-1", "seconds > 0"),
            ("TLO_PANIC_MODE", "maybe", "true or false"),
            ("TLO_CONCURRENCY", "0", ">= 1"),
            ("TLO_QUEUE_CONCURRENCY", "emails", "queue=limit"),
            ("TLO_CANCEL_GRACE_MS", "soon", "milliseconds"),
            ("TLO_LEASE_SECS", "0", "seconds > 0"),
            ("TLO_RETAIN_DONE_SECS", "a week", "forever"),
        ];
        for (var, value, hint) in cases {
            let err = SettingsBuilder::default()
                .build_with_env(env(&[(var, value)]))
                .unwrap_err();
            match err {
                Error::InvalidSetting {
                    name,
                    value: v,
                    expected,
                } => {
                    assert_eq!((name.as_str(), v.as_str()), (var, value));
                    assert!(expected.contains(hint), "{var}: {expected}");
                }
                other => panic!("{var}: {other}"),
            }
        }
    }

    #[test]
    fn set_accepts_short_keys_and_variable_names_and_refuses_unknown_ones() {
        let s = SettingsBuilder::default()
            .set("concurrency", "3")
            .unwrap()
            .set("TLO_QUEUES", "a,b")
            .unwrap()
            .build_with_env(env(&[]))
            .unwrap();
        assert_eq!(
            (s.concurrency, s.queues.clone()),
            (3, vec!["a".to_string(), "b".to_string()])
        );
        let err = SettingsBuilder::default()
            .set("concurency", "3")
            .unwrap_err();
        assert!(err.to_string().contains("TLO_CONCURRENCY"), "{err}");
        let err = SettingsBuilder::default()
            .set("concurrency", "x")
            .unwrap_err();
        assert!(err.to_string().contains("TLO_CONCURRENCY"), "{err}");
    }

    #[test]
    fn typed_builder_values_are_validated() {
        let err = SettingsBuilder::default()
            .concurrency(0)
            .build_with_env(env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("TLO_CONCURRENCY"));
        let err = SettingsBuilder::default()
            .default_queue(" ")
            .build_with_env(env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("TLO_DEFAULT_QUEUE"));
    }
}
