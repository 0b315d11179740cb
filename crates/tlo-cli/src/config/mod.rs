//! `tlo.toml`: settings and shell-command tasks, checked so that every problem is reported with
//! its line and column, not just the first one.
//!
//! ```toml
//! [settings]
//! concurrency = 8
//!
//! [tasks.backup]
//! command = "pg_dump {db} > /tmp/{db}.sql"
//! cron = "0 3 * * *"
//! args = { db = "main" }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod check;
mod processes;
mod tasks;
mod workflows;

use check::*;

pub(crate) use processes::ProcessConfig;
pub(crate) use workflows::WorkflowConfig;

use serde_json::{Map, Value};
use tlo::{
    Backoff, MisfirePolicy, Schedule, Settings, SettingsBuilder, ShellCommand, TaskOptions,
    Template, Tlo,
};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The keys a task table accepts, in the order the documentation lists them.
const TASK_KEYS: &[&str] = &[
    "command",
    "description",
    "warning",
    "queue",
    "priority",
    "max_attempts",
    "backoff",
    "retry_wait",
    "retry_wait_max",
    "timeout",
    "exclusive",
    "cancellable",
    "every",
    "cron",
    "timezone",
    "misfire",
    "overlap",
    "fire_on_start",
    "args",
    "env",
    "workdir",
    "shell",
    "metadata",
];

/// A parsed and validated `tlo.toml`.
pub(crate) struct Config {
    /// The file it was read from, when it came from a file.
    pub(crate) path: Option<PathBuf>,
    /// `[settings]` entries in file order: key, value in its string form, 1-based line.
    pub(crate) settings: Vec<(String, String, usize)>,
    /// `[tasks.*]` tables in file order.
    pub(crate) tasks: Vec<TaskConfig>,
    /// `[workflows.*]` tables in file order.
    pub(crate) workflows: Vec<WorkflowConfig>,
    /// `[processes.*]` tables in file order.
    pub(crate) processes: Vec<ProcessConfig>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("settings", &self.settings)
            .field("tasks", &self.tasks)
            .finish()
    }
}

/// One `[tasks.NAME]` table: a shell command and its options.
pub(crate) struct TaskConfig {
    /// The task name (the table key).
    pub(crate) name: String,
    /// The 1-based line of the task's name in the file.
    pub(crate) line: usize,
    /// The command, with its shell, environment and working directory.
    pub(crate) command: ShellCommand,
    /// Queue, retries, schedule, arguments for scheduled runs, ...
    pub(crate) options: TaskOptions,
    /// A short description of the schedule for listings, e.g. `every 10s` or
    /// ``cron `0 3 * * *` (Europe/Kyiv)``.
    pub(crate) schedule_description: Option<String>,
}

impl fmt::Debug for TaskConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskConfig")
            .field("name", &self.name)
            .field("line", &self.line)
            .field("command", &self.command.template().source())
            .field("options", &self.options)
            .field("schedule_description", &self.schedule_description)
            .finish()
    }
}

/// One problem in the file, with its 1-based line and column (both 0 when the problem is not
/// about a place in the file, e.g. an unreadable file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// 1-based line, 0 when not about a place in the file.
    pub(crate) line: usize,
    /// 1-based column in characters, 0 when not about a place in the file.
    pub(crate) column: usize,
    /// What is wrong.
    pub(crate) message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a file, in file order.
#[derive(Debug)]
pub(crate) struct ConfigErrors {
    /// The file name as given (empty when the text did not come from a file).
    pub(crate) path: String,
    /// The problems, sorted by line and column.
    pub(crate) errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// One problem not tied to a place in a file (e.g. settings refused when building).
    pub(crate) fn single(message: impl Into<String>) -> Self {
        ConfigErrors {
            path: String::new(),
            errors: vec![ConfigError {
                line: 0,
                column: 0,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigErrors {
    /// One problem per line: `tlo.toml:12:5: message` (`12:5: message` without a file name).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if self.path.is_empty() || error.line == 0 {
                write!(f, "{error}")?;
            } else {
                write!(f, "{}:{error}", self.path)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Parses and validates `text`; `path` only names the file in messages and in
    /// [`Config::path`]. Returns every problem found, not just the first (a TOML syntax error
    /// stops the check, though: nothing after it can be trusted).
    pub(crate) fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let label = path.map(|p| p.display().to_string()).unwrap_or_default();
        let mut checker = Checker::new(text);
        let document = match DeTable::parse(text) {
            Ok(document) => document,
            Err(err) => {
                let span = err.span().unwrap_or(0..0);
                let message = err.message().trim().replace('\n', "; ");
                checker.error(span, format!("TOML syntax error: {message}"));
                return Err(checker.into_errors(label));
            }
        };
        let mut settings = Vec::new();
        let mut tasks = Vec::new();
        let mut workflows = Vec::new();
        let mut processes = Vec::new();
        for (key, value) in entries(document.get_ref()) {
            match key_str(key) {
                "settings" => {
                    if let Some(table) = checker.table(value, "`settings`") {
                        checker.settings(table, &mut settings);
                    }
                }
                "tasks" => {
                    if let Some(table) = checker.table(value, "`tasks`") {
                        for (name, task) in entries(table) {
                            if let Some(task) = checker.task(name, task) {
                                tasks.push(task);
                            }
                        }
                    }
                }
                "workflows" => {
                    if let Some(table) = checker.table(value, "`workflows`") {
                        for (name, workflow) in entries(table) {
                            if let Some(workflow) = checker.workflow(name, workflow) {
                                workflows.push(workflow);
                            }
                        }
                    }
                }
                "processes" => {
                    if let Some(table) = checker.table(value, "`processes`") {
                        for (id, process) in entries(table) {
                            if let Some(process) = checker.process(id, process) {
                                processes.push(process);
                            }
                        }
                    }
                }
                other => checker.error(
                    key.span(),
                    format!(
                        "unknown top-level table `{other}` (expected settings, tasks, workflows or processes)"
                    ),
                ),
            }
        }
        for workflow in &workflows {
            for (task, line, column) in &workflow.task_refs {
                if !tasks.iter().any(|t: &TaskConfig| &t.name == task) {
                    checker.errors.push(ConfigError {
                        line: *line,
                        column: *column,
                        message: format!(
                            "workflow `{}` names task `{task}`, which no [tasks.{task}] defines",
                            workflow.workflow.name()
                        ),
                    });
                }
            }
        }
        for process in &processes {
            let task = &process.definition.task;
            if !tasks.iter().any(|t: &TaskConfig| &t.name == task) {
                let (line, column) = process.task_at;
                checker.errors.push(ConfigError {
                    line,
                    column,
                    message: format!(
                        "process `{}` names task `{task}`, which no [tasks.{task}] defines",
                        process.definition.id
                    ),
                });
            }
        }
        if checker.errors.is_empty() {
            Ok(Config {
                path: path.map(Path::to_path_buf),
                settings,
                tasks,
                workflows,
                processes,
            })
        } else {
            Err(checker.into_errors(label))
        }
    }

    /// Reads and parses the file at `path`; an unreadable file is one error naming the path, at
    /// line 0.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, Some(path)),
            Err(err) => Err(ConfigErrors::single(format!(
                "cannot read config file {}: {err}",
                path.display()
            ))),
        }
    }

    /// The `[settings]` entries applied, in file order, over a default builder.
    ///
    /// They are explicit builder values, so they win over the `TLO_*` environment variables
    /// (which the builder only reads at build time, for settings still unset); the caller applies
    /// its command-line flags on the returned builder afterwards, so flags win over the file.
    /// Precedence: flags > file > environment > defaults.
    pub(crate) fn settings_builder(&self) -> tlo::Result<SettingsBuilder> {
        self.settings
            .iter()
            .try_fold(SettingsBuilder::default(), |builder, (key, value, _)| {
                builder.set(key, value)
            })
    }

    /// The value `[settings]` gives `variable` (named `TLO_NAME`), by short key or full name.
    pub(crate) fn value(&self, variable: &str) -> Option<&str> {
        let short = variable.trim_start_matches("TLO_");
        self.settings
            .iter()
            .rev()
            .find(|(key, _, _)| {
                let key = key.to_ascii_uppercase();
                key == variable || key == short
            })
            .map(|(_, value, _)| value.as_str())
    }

    /// Registers every task on `tlo` as a shell task, then every workflow (with the shell tasks
    /// of its inline `command` nodes).
    pub(crate) fn register(&self, tlo: &Tlo) -> tlo::Result<()> {
        for workflow in &self.workflows {
            for (name, command) in &workflow.inline_tasks {
                tlo.register_shell(name, TaskOptions::new(), command.clone())?;
            }
        }
        for task in &self.tasks {
            tlo.register_shell(&task.name, task.options.clone(), task.command.clone())?;
            tracing::debug!(
                task = %task.name,
                file = %self.path.as_deref().unwrap_or(Path::new("-")).display(),
                line = task.line,
                schedule = task.schedule_description.as_deref().unwrap_or("-"),
                "registered task"
            );
        }
        for workflow in &self.workflows {
            tlo.register_workflow(workflow.workflow.clone())?;
        }
        Ok(())
    }

    /// Resyncs the store with the `[processes.*]` tables: new ones are created idle, edited
    /// ones updated (their run state untouched). Processes the file no longer names are left
    /// alone: they may have been defined by a program (`tlo.resync` with `clean` removes).
    pub(crate) async fn define_processes(&self, tlo: &Tlo) -> tlo::Result<()> {
        let definitions: Vec<_> = self
            .processes
            .iter()
            .map(|p| p.definition.clone())
            .collect();
        tlo.resync(&definitions, false, &Map::new()).await.map(drop)
    }

    /// The workflow `name`.
    pub(crate) fn workflow(&self, name: &str) -> Option<&WorkflowConfig> {
        self.workflows.iter().find(|w| w.workflow.name() == name)
    }
}

#[cfg(test)]
mod tests;
