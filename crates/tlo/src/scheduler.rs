//! The scheduler loop: enqueues scheduled tasks once per slot, across any number of schedulers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tlo_core::{Job, JobFilter, JobState, Result};

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

/// One tick for one task: fire its due slots, each exactly once across any number of
/// schedulers, honouring overlap and misfire rules.
///
/// A slot's job is submitted before the slot is claimed, under a unique key of the slot's own:
/// a scheduler that dies (or meets a store error) between the two leaves the slot due, and the
/// next scheduler to take it finds the job already there instead of submitting another; one
/// that died before submitting leaves the slot due too, so no slot is lost either.
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
    for slot in due_slots(engine, name, schedule, first_seen, now).await? {
        let key = slot_key(name, slot);
        if !schedule.overlap_allowed() {
            // This slot's own job (submitted by a scheduler that stopped short of claiming the
            // slot) is no reason to skip the slot.
            let previous = active_run(engine, name)
                .await?
                .filter(|active| active.unique_key.as_deref() != Some(key.as_str()));
            if previous.is_some() {
                if engine.store.claim_schedule_slot(name, slot).await? {
                    tracing::info!(task = name, %slot, "schedule slot skipped: previous run still active");
                }
                continue;
            }
        }
        let args = def
            .options
            .schedule_args
            .clone()
            .unwrap_or_else(|| json!({}));
        engine
            .submit(name, args, slot_submission(slot, key), false)
            .await?;
        engine.store.claim_schedule_slot(name, slot).await?;
    }
    Ok(())
}

/// The unique key of the job of `task`'s schedule slot `slot`.
fn slot_key(task: &str, slot: DateTime<Utc>) -> String {
    format!("schedule:{task}:{}", slot.to_rfc3339())
}

/// How the job of schedule slot `slot` is submitted: marked with its slot, under its key.
fn slot_submission(slot: DateTime<Utc>, key: String) -> SubmitOptions {
    SubmitOptions::new()
        .metadata("schedule_slot", Value::from(slot.to_rfc3339()))
        .unique_key(key)
}

/// The due slots of the schedule `name` not yet claimed, oldest first; slots the misfire policy
/// skips are recorded as passed.
async fn due_slots(
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
    Ok(decision.fire)
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
    let mut won = Vec::new();
    for slot in due_slots(engine, name, schedule, first_seen, now).await? {
        // Lost: another scheduler fired this slot.
        if engine.store.claim_schedule_slot(name, slot).await? {
            won.push(slot);
        }
    }
    Ok(won)
}

/// A job of `task` still active, if any.
async fn active_run(engine: &Engine, task: &str) -> Result<Option<Job>> {
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
    Ok(engine.store.list(&filter).await?.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TaskOptions, Tlo};

    /// A scheduler that submitted a slot's job and died before claiming the slot: the next tick
    /// claims the slot and finds the job there, so the slot still fires exactly once.
    #[tokio::test]
    async fn a_slot_whose_job_went_in_but_was_never_claimed_fires_once() {
        let tlo = Tlo::builder().build_with_env(|_| None).unwrap();
        tlo.register(
            "report",
            TaskOptions::new()
                .schedule(Schedule::every(std::time::Duration::from_secs(3600)).unwrap()),
            |_ctx, _: Value| async { Ok::<_, String>(()) },
        )
        .unwrap();
        let engine = tlo.engine();
        let def = engine.registry.require("report").unwrap();
        let schedule = def.options.schedule.clone().unwrap();
        let now = Utc::now();
        let slots = due_slots(engine, "report", &schedule, now, now)
            .await
            .unwrap();
        assert_eq!(slots.len(), 1, "the first tick fires one slot");
        // What the dead scheduler did: the slot's job, no claim.
        let options = slot_submission(slots[0], slot_key("report", slots[0]));
        engine
            .submit("report", json!({}), options, false)
            .await
            .unwrap();
        for _ in 0..2 {
            tick(engine, &def, now, now).await.unwrap();
        }
        let jobs = engine
            .store
            .list(&JobFilter::default().task("report"))
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(
            engine.store.last_schedule_slot("report").await.unwrap(),
            Some(slots[0])
        );
    }
}
