//! Settings from text: `TLO_*` variables and config keys, each checked and named in errors.

use std::collections::BTreeMap;
use std::time::Duration;

use tlo_core::{Error, Result};

use super::Settings;

pub(super) fn invalid(name: &str, value: &str, expected: &str) -> Error {
    Error::InvalidSetting {
        name: name.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

pub(super) fn positive_usize(name: &str, value: &str) -> Result<usize> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(name, value, "a whole number >= 1"))
}

pub(super) fn millis(name: &str, value: &str) -> Result<Duration> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| invalid(name, value, "a whole number of milliseconds"))
}

pub(super) fn positive_secs(name: &str, value: &str) -> Result<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| invalid(name, value, "a number of seconds > 0"))
}

pub(super) fn boolean(name: &str, value: &str) -> Result<bool> {
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

pub(super) fn retention(name: &str, value: &str) -> Result<Option<Duration>> {
    if value.trim().eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    value
        .trim()
        .parse::<u64>()
        .map(|secs| Some(Duration::from_secs(secs)))
        .map_err(|_| invalid(name, value, "a whole number of seconds, or forever"))
}

pub(super) fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(super) fn queue_caps(name: &str, value: &str) -> Result<BTreeMap<String, usize>> {
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
pub(super) fn apply(settings: &mut Settings, var: &str, value: &str) -> Result<()> {
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
        "TLO_POSTGRES_LISTEN" => settings.postgres_listen = boolean(var, value)?,
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

pub(super) fn unknown(key: &str, value: &str) -> Error {
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
pub(super) fn variable(key: &str) -> Option<&'static str> {
    let upper = key.trim().to_ascii_uppercase();
    let upper = upper.strip_prefix("TLO_").unwrap_or(&upper).to_owned();
    Settings::VARIABLES
        .iter()
        .map(|(name, _, _)| *name)
        .find(|name| name[4..] == upper)
}
