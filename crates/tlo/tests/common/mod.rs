//! Shared test helpers: a fast-ticking orchestrator isolated from the process environment.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use tlo::{SettingsBuilder, Tlo, TloBuilder};

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Settings with short intervals so tests run quickly.
pub fn fast() -> SettingsBuilder {
    SettingsBuilder::default()
        .tick_interval(ms(50))
        .poll_interval(ms(50))
        .cancel_grace(ms(300))
        .progress_flush_interval(ms(20))
}

/// Builds without reading `TLO_*` variables, so the machine's environment cannot leak in.
pub fn build(builder: TloBuilder) -> Tlo {
    builder
        .build_with_env(|_| None)
        .expect("build orchestrator")
}

pub fn tlo() -> Tlo {
    build(Tlo::builder().settings(fast()))
}

pub fn tlo_with(settings: SettingsBuilder) -> Tlo {
    build(Tlo::builder().settings(settings))
}

/// Polls `check` until it returns true, failing after 5 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(ms(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
