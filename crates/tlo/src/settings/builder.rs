//! [`SettingsBuilder`]: explicit values over `TLO_*` variables over defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use tlo_core::Result;

use super::parse::{apply, invalid, unknown, variable};
use super::{LockerKind, QueueKind, RegistryKind, Settings, StopBehavior, StoreKind};

/// Explicit settings; unset fields come from `TLO_*` variables, then defaults.
#[derive(Debug, Clone, Default)]
pub struct SettingsBuilder {
    explicit: BTreeMap<&'static str, String>,
    typed: Settings,
    set_typed: Vec<&'static str>,
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
    setter!(/// Wake workers by PostgreSQL's LISTEN/NOTIFY (false: poll only).
        postgres_listen: bool, "TLO_POSTGRES_LISTEN", |s, v| s.postgres_listen = v);
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
        "TLO_POSTGRES_LISTEN" => to.postgres_listen = from.postgres_listen,
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
