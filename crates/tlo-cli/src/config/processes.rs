//! `[processes.ID]` tables: long-lived processes (optio) run by a task of `[tasks]`, created
//! idle on the store by `tlo run` and `tlo worker`, launched with `tlo launch ID`.
//!
//! ```toml
//! [processes.nightly-report]
//! task = "report"                   # a task of [tasks]
//! name = "Nightly report"
//! description = "Sends yesterday's figures"
//! params = { day = "yesterday" }    # the task's arguments
//! metadata = { team = "billing" }
//! cancellable = true
//! warning = "Takes ten minutes"
//! special = false
//! cron = "0 2 * * *"                # or every = "1h"; launched at each slot (with timezone,
//!                                   # misfire, fire_on_start as for tasks)
//! ```

use tlo::ProcessDefinition;
use toml::de::DeValue;

use super::{Checker, Field, Item, Key, entries, header_key, key_str};

const PROCESS_KEYS: &[&str] = &[
    "task",
    "name",
    "description",
    "params",
    "metadata",
    "cancellable",
    "warning",
    "special",
    "every",
    "cron",
    "timezone",
    "misfire",
    "fire_on_start",
];

/// The keys that make up a process's schedule, read as a task's are.
const SCHEDULE_KEYS: &[&str] = &["every", "cron", "timezone", "misfire", "fire_on_start"];

/// A validated `[processes.ID]` table.
#[derive(Debug, Clone)]
pub(crate) struct ProcessConfig {
    /// The definition, ready for [`tlo::Tlo::define_process`].
    pub(crate) definition: ProcessDefinition,
    /// 1-based line and column of its `task` key (checked against `[tasks]`).
    pub(crate) task_at: (usize, usize),
}

impl Checker<'_> {
    /// Checks one `[processes.ID]` table; every problem is recorded with its line.
    pub(super) fn process(&mut self, id_key: &Key<'_>, item: &Item<'_>) -> Option<ProcessConfig> {
        let id = key_str(id_key);
        let header = format!("[processes.{}]", header_key(id));
        let DeValue::Table(table) = item.get_ref() else {
            self.wrong_type(item, &format!("process `{id}`"), "a table");
            return None;
        };
        let errors_before = self.errors.len();
        let mut definition = ProcessDefinition::new(id, "");
        let mut task_at = None;
        let mut schedule_fields: Vec<Field<'_, '_>> = Vec::new();
        for (key, value) in entries(table) {
            let what = format!("`{}` in {header}", key_str(key));
            if let Some(known) = SCHEDULE_KEYS.iter().find(|k| **k == key_str(key)) {
                schedule_fields.push((known, key, value));
                continue;
            }
            match key_str(key) {
                "task" => {
                    if let Some(task) = self.string(value, &what) {
                        definition.task = task.to_owned();
                        task_at = Some(self.position(value.span().start));
                    }
                }
                "name" => definition.name = self.string(value, &what).map(str::to_owned),
                "description" => {
                    definition.description = self.string(value, &what).map(str::to_owned)
                }
                "warning" => definition.warning = self.string(value, &what).map(str::to_owned),
                "params" => {
                    if let Some(params) = self.json(value, &what) {
                        definition.params = params;
                    }
                }
                "metadata" => {
                    if let Some(table) = self.table(value, &what) {
                        if let Some(metadata) = self.json_object(table, &what) {
                            definition.metadata = metadata;
                        }
                    }
                }
                "cancellable" => {
                    if let Some(flag) = self.boolean(value, &what) {
                        definition.cancellable = flag;
                    }
                }
                "special" => {
                    if let Some(flag) = self.boolean(value, &what) {
                        definition.special = flag;
                    }
                }
                other => self.error(
                    key.span(),
                    format!(
                        "unknown key `{other}` in {header} (expected one of {})",
                        PROCESS_KEYS.join(", ")
                    ),
                ),
            }
        }
        if let Some((schedule, _)) = self.schedule(&schedule_fields, &header) {
            definition.schedule = Some(schedule);
        }
        if id.trim().is_empty() {
            self.error(id_key.span(), "a process id cannot be empty");
        }
        let Some(task_at) = task_at else {
            if self.errors.len() == errors_before {
                self.error(id_key.span(), format!("{header} needs a `task`"));
            }
            return None;
        };
        (self.errors.len() == errors_before).then_some(ProcessConfig {
            definition,
            task_at,
        })
    }
}
