//! The scheduler loop: enqueues scheduled tasks once per slot, across any number of schedulers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tlo_core::{JobFilter, JobState, Result};

use crate::engine::{Engine, SubmitOptions};
use crate::schedule::Schedule;
use crate::task::TaskDef;

/// Runs until the orchestrator stops; in panic mode the first error ends it and is returned.
pub(crate) async fn run(engine: Arc<Engine>) -> Result<()> {
    let first_seen = Utc::now();
    let mut stop = engine.stop.subscribe();
    loop {
        if stop.borrow_and_update().is_some() {
            return Ok(());
        }
        for def in engine.registry.tasks() {
            let ticked = tick(&engine, &def, first_seen, Utc::now()).await;
            if let Some(err) = failed(&engine, def.name(), ticked) {
                return Err(err);
            }
        }
        let ticked = crate::process::tick_schedules(&engine, first_seen, Utc::now()).await;
        if let Some(err) = failed(&engine, "processes", ticked) {
            return Err(err);
        }
        tokio::select! {
            _ = tokio::time::sleep(engine.settings.tick_interval) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Logs a failed tick of `schedules`; in panic mode, the error that ends the scheduler.
fn failed(engine: &Engine, schedules: &str, ticked: Result<()>) -> Option<tlo_core::Error> {
    let err = ticked.err()?;
    if engine.settings.panic_mode {
        tracing::error!(schedules, error = %err, "scheduler failed (panic mode)");
        return Some(err);
    }
    tracing::warn!(schedules, error = %err, "scheduler tick failed");
    None
}

/// One tick for one task: fire the due slots it wins, honouring overlap and misfire rules.
pub(crate) async fn tick(
    engine: &Arc<Engine>,
    def: &TaskDef,
    first_seen: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(schedule) = &def.options.schedule else {
        return Ok(());
    };
    let name = def.name();
    for slot in won_slots(engine, name, schedule, first_seen, now).await? {
        if !schedule.overlap_allowed() && has_active_run(engine, name).await? {
            tracing::info!(task = name, %slot, "schedule slot skipped: previous run still active");
            continue;
        }
        let args = def
            .options
            .schedule_args
            .clone()
            .unwrap_or_else(|| json!({}));
        let options =
            SubmitOptions::new().metadata("schedule_slot", Value::from(slot.to_rfc3339()));
        engine.submit(name, args, options, false).await?;
    }
    Ok(())
}

/// The due slots of the schedule `name` that this scheduler wins, oldest first: each is claimed
/// in the store, so any number of schedulers fire it once. Slots the misfire policy skips are
/// recorded as passed.
pub(crate) async fn won_slots(
    engine: &Engine,
    name: &str,
    schedule: &Schedule,
    first_seen: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>> {
    let last = engine.store.last_schedule_slot(name).await?;
    let decision = schedule.due(last, first_seen, now);
    if let Some(slot) = decision.skip_to {
        if engine.store.claim_schedule_slot(name, slot).await? {
            tracing::info!(schedule = name, %slot, "missed schedule slots skipped (misfire policy)");
        }
    }
    let mut won = Vec::with_capacity(decision.fire.len());
    for slot in decision.fire {
        // Lost: another scheduler fired this slot.
        if engine.store.claim_schedule_slot(name, slot).await? {
            won.push(slot);
        }
    }
    Ok(won)
}

async fn has_active_run(engine: &Engine, task: &str) -> Result<bool> {
    let filter = JobFilter {
        states: vec![
            JobState::Scheduled,
            JobState::Running,
            JobState::CancelRequested,
            JobState::Cancelling,
        ],
        task: Some(task.to_owned()),
        limit: Some(1),
        ..JobFilter::default()
    };
    Ok(!engine.store.list(&filter).await?.is_empty())
}
