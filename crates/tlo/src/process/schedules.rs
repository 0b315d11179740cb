//! Process schedules: the scheduler launches a scheduled process at each slot it wins.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{ControlError, ProcessDefinition};
use crate::engine::Engine;
use crate::schedule::Schedule;
use crate::tlo::Tlo;

/// The name a process schedule's slots are claimed under (beside the tasks' names).
fn slot_name(id: &str) -> String {
    format!("{}{id}", tlo_core::PROCESS_KEY_PREFIX)
}

impl Tlo {
    /// Keeps `def`'s schedule for the scheduler (or drops the one it had).
    pub(super) fn remember_schedule(&self, def: &ProcessDefinition) {
        let mut schedules = self.engine().process_schedules.write();
        match &def.schedule {
            Some(schedule) => schedules.insert(def.id.clone(), schedule.clone()),
            None => schedules.remove(&def.id),
        };
    }
}

/// One scheduler tick for every scheduled process: launches those whose slot is due and won.
pub(crate) async fn tick(
    engine: &Arc<Engine>,
    first_seen: DateTime<Utc>,
    now: DateTime<Utc>,
) -> tlo_core::Result<()> {
    let schedules: Vec<(String, Schedule)> = engine
        .process_schedules
        .read()
        .iter()
        .map(|(id, schedule)| (id.clone(), schedule.clone()))
        .collect();
    for (id, schedule) in schedules {
        let slots =
            crate::scheduler::won_slots(engine, &slot_name(&id), &schedule, first_seen, now)
                .await?;
        for slot in slots {
            match Tlo::from_engine(engine.clone()).launch(&id).await {
                Ok(_) => tracing::info!(process = %id, %slot, "scheduled launch"),
                Err(ControlError::Store(err)) => return Err(err),
                // Still running, blocked, or deleted meanwhile: this slot passes.
                Err(refused) => {
                    tracing::info!(process = %id, %slot, reason = %refused, "scheduled launch skipped")
                }
            }
        }
    }
    Ok(())
}

/// Stops launching process `id` on a schedule (deleted, removed by a resync, or ephemeral
/// and ended).
pub(super) fn forget(engine: &Engine, id: &str) {
    engine.process_schedules.write().remove(id);
}
