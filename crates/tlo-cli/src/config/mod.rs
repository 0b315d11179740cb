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

mod processes;
mod tasks;
mod workflows;

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

type Key<'i> = Spanned<Cow<'i, str>>;
type Item<'i> = Spanned<DeValue<'i>>;

/// The entries of a table in file order (the parsed table is sorted by key).
fn entries<'a, 'i>(table: &'a DeTable<'i>) -> Vec<(&'a Key<'i>, &'a Item<'i>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

fn key_str<'a>(key: &'a Key<'_>) -> &'a str {
    key.get_ref()
}

/// `a`/`an` and the TOML type name of a value, for messages.
fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A table key as it would be written in a header: bare when possible, quoted otherwise.
fn header_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// The argument names a template's `{name}` placeholders read (the first segment of a dotted
/// path such as `{user.id}`), in order, without duplicates.
fn placeholders(template: &Template) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in template.names() {
        let root = name.split('.').next().unwrap_or_default();
        if !names.iter().any(|n| n == root) {
            names.push(root.to_owned());
        }
    }
    names
}

/// The short setting keys (`concurrency` for `TLO_CONCURRENCY`), for messages.
fn setting_keys() -> Vec<String> {
    Settings::VARIABLES
        .iter()
        .map(|(name, _, _)| name.trim_start_matches("TLO_").to_ascii_lowercase())
        .collect()
}

/// Whether `key` names a setting (short or `TLO_*` form, any case), as `SettingsBuilder::set`
/// accepts it.
fn is_setting_key(key: &str) -> bool {
    let upper = key.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("TLO_").unwrap_or(&upper);
    Settings::VARIABLES
        .iter()
        .any(|(name, _, _)| name.strip_prefix("TLO_") == Some(short))
}

fn integer_value(value: &DeValue<'_>) -> Option<i64> {
    match value {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
}

fn float_value(value: &DeValue<'_>) -> Option<f64> {
    match value {
        DeValue::Float(f) => f.as_str().parse().ok(),
        _ => None,
    }
}

/// The string form of a scalar (string, integer, float or boolean).
fn scalar_text(value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(_) => integer_value(value).map(|i| i.to_string()),
        DeValue::Float(_) => float_value(value).map(|f| f.to_string()),
        DeValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Walks the document, collecting problems with their positions.
struct Checker<'t> {
    text: &'t str,
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

/// A known key of a task table, its key and its value.
type Field<'a, 'i> = (&'static str, &'a Key<'i>, &'a Item<'i>);

/// What a task's fields say about its schedule, before the schedule is built.
struct ScheduleParts<'a, 'i> {
    every: Option<&'a Item<'i>>,
    cron: Option<&'a Item<'i>>,
    timezone: Option<&'a Item<'i>>,
    misfire: Option<&'a Item<'i>>,
    overlap: Option<&'a Item<'i>>,
    fire_on_start: Option<&'a Item<'i>>,
}

impl<'t> Checker<'t> {
    fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Checker {
            text,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            line,
            column,
            message: message.into(),
        });
    }

    fn into_errors(mut self, path: String) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors {
            path,
            errors: self.errors,
        }
    }

    fn wrong_type(&mut self, item: &Item<'_>, what: &str, expected: &str) {
        let found = type_name(item.get_ref());
        self.error(
            item.span(),
            format!("{what} must be {expected}, found {found}"),
        );
    }

    fn table<'a, 'i>(&mut self, item: &'a Item<'i>, what: &str) -> Option<&'a DeTable<'i>> {
        match item.get_ref() {
            DeValue::Table(table) => Some(table),
            _ => {
                self.wrong_type(item, what, "a table");
                None
            }
        }
    }

    fn string<'a>(&mut self, item: &'a Item<'_>, what: &str) -> Option<&'a str> {
        match item.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(item, what, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, item: &Item<'_>, what: &str) -> Option<bool> {
        match item.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(item, what, "a boolean (true or false)");
                None
            }
        }
    }

    fn integer(&mut self, item: &Item<'_>, what: &str) -> Option<i64> {
        match item.get_ref() {
            DeValue::Integer(_) => {
                let value = integer_value(item.get_ref());
                if value.is_none() {
                    self.error(item.span(), format!("{what} is out of range"));
                }
                value
            }
            _ => {
                self.wrong_type(item, what, "an integer");
                None
            }
        }
    }

    /// A duration: a string such as `"30s"`, `"5m"`, `"2h30m"`, or a number of seconds.
    fn duration(&mut self, item: &Item<'_>, what: &str) -> Option<Duration> {
        let expected = "a duration such as \"30s\", \"5m\", \"1h\" or a number of seconds";
        match item.get_ref() {
            DeValue::String(s) => match Schedule::parse_interval(s) {
                Ok(duration) => Some(duration),
                Err(err) => {
                    self.error(item.span(), format!("{what}: {err}"));
                    None
                }
            },
            DeValue::Integer(_) => match integer_value(item.get_ref()) {
                Some(secs) if secs >= 0 => Some(Duration::from_secs(secs.unsigned_abs())),
                _ => {
                    self.error(
                        item.span(),
                        format!("{what} must be {expected}, not negative"),
                    );
                    None
                }
            },
            DeValue::Float(_) => match float_value(item.get_ref()) {
                Some(secs) if secs.is_finite() && secs >= 0.0 => {
                    Some(Duration::from_secs_f64(secs))
                }
                _ => {
                    self.error(item.span(), format!("{what} must be {expected}"));
                    None
                }
            },
            _ => {
                self.wrong_type(item, what, expected);
                None
            }
        }
    }

    /// A TOML value as JSON (datetimes become strings).
    fn json(&mut self, item: &Item<'_>, what: &str) -> Option<Value> {
        match item.get_ref() {
            DeValue::String(s) => Some(Value::String(s.to_string())),
            DeValue::Integer(_) => self.integer(item, what).map(Value::from),
            DeValue::Float(_) => {
                match float_value(item.get_ref()).and_then(serde_json::Number::from_f64) {
                    Some(number) => Some(Value::Number(number)),
                    None => {
                        self.error(
                            item.span(),
                            format!("{what} must be a finite number (JSON has no nan or inf)"),
                        );
                        None
                    }
                }
            }
            DeValue::Boolean(b) => Some(Value::Bool(*b)),
            DeValue::Datetime(dt) => Some(Value::String(dt.to_string())),
            DeValue::Array(array) => {
                let mut values = Vec::with_capacity(array.len());
                let mut ok = true;
                for element in array.iter() {
                    match self.json(element, what) {
                        Some(value) => values.push(value),
                        None => ok = false,
                    }
                }
                ok.then_some(Value::Array(values))
            }
            DeValue::Table(table) => self.json_object(table, what).map(Value::Object),
        }
    }

    fn json_object(&mut self, table: &DeTable<'_>, what: &str) -> Option<Map<String, Value>> {
        let mut map = Map::new();
        let mut ok = true;
        for (key, value) in entries(table) {
            let key = key_str(key);
            match self.json(value, &format!("{what}.{}", header_key(key))) {
                Some(value) => {
                    map.insert(key.to_owned(), value);
                }
                None => ok = false,
            }
        }
        ok.then_some(map)
    }

    /// The string form of a setting value, as `SettingsBuilder::set` takes it.
    fn setting_text(&mut self, item: &Item<'_>, what: &str) -> Option<String> {
        let expected = "a string, number or boolean";
        match item.get_ref() {
            DeValue::Array(array) => {
                let mut parts = Vec::with_capacity(array.len());
                for element in array.iter() {
                    match scalar_text(element.get_ref()) {
                        Some(text) => parts.push(text),
                        None => {
                            self.wrong_type(element, &format!("each element of {what}"), expected);
                            return None;
                        }
                    }
                }
                Some(parts.join(","))
            }
            DeValue::Table(table) => {
                let mut parts = Vec::with_capacity(table.len());
                for (key, value) in entries(table) {
                    let key = key_str(key);
                    match scalar_text(value.get_ref()) {
                        Some(text) => parts.push(format!("{key}={text}")),
                        None => {
                            self.wrong_type(
                                value,
                                &format!("{what}.{}", header_key(key)),
                                expected,
                            );
                            return None;
                        }
                    }
                }
                Some(parts.join(","))
            }
            other => match scalar_text(other) {
                Some(text) => Some(text),
                None => {
                    self.wrong_type(item, what, "a string, number, boolean, array or table");
                    None
                }
            },
        }
    }

    fn settings(&mut self, table: &DeTable<'_>, settings: &mut Vec<(String, String, usize)>) {
        for (key, value) in entries(table) {
            let name = key_str(key);
            let what = format!("`{name}` in [settings]");
            let Some(text) = self.setting_text(value, &what) else {
                continue;
            };
            match SettingsBuilder::default().set(name, &text) {
                Ok(_) => settings.push((name.to_owned(), text, self.line(&key.span()))),
                Err(_) if !is_setting_key(name) => {
                    self.error(
                        key.span(),
                        format!(
                            "unknown key `{name}` in [settings] (expected one of {}, or their TLO_* variable names)",
                            setting_keys().join(", ")
                        ),
                    );
                }
                Err(err) => self.error(value.span(), err.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
