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

    fn task(&mut self, name_key: &Key<'_>, item: &Item<'_>) -> Option<TaskConfig> {
        let name = key_str(name_key);
        let header = format!("[tasks.{}]", header_key(name));
        let mut valid = true;
        if name.trim().is_empty() {
            self.error(name_key.span(), "a task name must not be empty");
            valid = false;
        }
        let DeValue::Table(table) = item.get_ref() else {
            self.wrong_type(
                item,
                &format!("task `{name}`"),
                &format!("a table (write it as {header})"),
            );
            return None;
        };

        let mut fields: Vec<Field<'_, '_>> = Vec::new();
        for (key, value) in entries(table) {
            let key_name = key_str(key);
            match TASK_KEYS.iter().find(|k| **k == key_name) {
                Some(known) => fields.push((known, key, value)),
                None => {
                    self.error(
                        key.span(),
                        format!(
                            "unknown key `{key_name}` in {header} (expected one of {})",
                            TASK_KEYS.join(", ")
                        ),
                    );
                    valid = false;
                }
            }
        }
        let field = |name: &str| fields.iter().find(|(k, _, _)| *k == name).map(|f| f.2);
        let what = |key: &str| format!("`{key}` in {header}");
        let errors_before = self.errors.len();

        let mut options = TaskOptions::new();
        if let Some(text) = field("description").and_then(|v| self.string(v, &what("description")))
        {
            options = options.description(text);
        }
        if let Some(text) = field("warning").and_then(|v| self.string(v, &what("warning"))) {
            options = options.warning(text);
        }
        if let Some(text) = field("queue").and_then(|v| self.string(v, &what("queue"))) {
            options = options.queue(text);
        }
        if let Some(priority) = field("priority").and_then(|v| self.integer(v, &what("priority"))) {
            match i32::try_from(priority) {
                Ok(priority) => options = options.priority(priority),
                Err(_) => self.error(
                    field("priority").map_or(0..0, |v| v.span()),
                    format!(
                        "{} is out of range ({}..={})",
                        what("priority"),
                        i32::MIN,
                        i32::MAX
                    ),
                ),
            }
        }
        let attempts = field("max_attempts")
            .and_then(|item| Some((item, self.integer(item, &what("max_attempts"))?)));
        if let Some((item, attempts)) = attempts {
            match u32::try_from(attempts) {
                Ok(attempts) if attempts >= 1 => options = options.max_attempts(attempts),
                _ => self.error(
                    item.span(),
                    format!(
                        "{} must be at least 1 (it counts the first attempt), found {attempts}",
                        what("max_attempts")
                    ),
                ),
            }
        }

        // Retries.
        let fixed = match field("backoff") {
            None => Some(false),
            Some(item) => match self.string(item, &what("backoff")) {
                Some("fixed") => Some(true),
                Some("exponential") => Some(false),
                Some(other) => {
                    self.error(
                        item.span(),
                        format!(
                            "{} must be \"fixed\" or \"exponential\", found \"{other}\"",
                            what("backoff")
                        ),
                    );
                    None
                }
                None => None,
            },
        };
        let wait = match field("retry_wait") {
            Some(item) => self.duration(item, &what("retry_wait")),
            None => Some(Duration::from_secs(1)),
        };
        let wait_max = match field("retry_wait_max") {
            Some(item) => self.duration(item, &what("retry_wait_max")),
            None => Some(Duration::from_secs(300)),
        };
        match (fixed, wait, wait_max) {
            (Some(true), Some(wait), _) => {
                if let Some(item) = field("retry_wait_max") {
                    self.error(
                        item.span(),
                        format!(
                            "{} applies only to backoff = \"exponential\"",
                            what("retry_wait_max")
                        ),
                    );
                }
                options = options.backoff(Backoff::fixed(wait));
            }
            (Some(false), Some(wait), Some(max)) => {
                if max < wait {
                    let span = field("retry_wait_max")
                        .or(field("retry_wait"))
                        .map_or(name_key.span(), |v| v.span());
                    self.error(
                        span,
                        format!(
                            "{} ({max:?}) is shorter than `retry_wait` ({wait:?})",
                            what("retry_wait_max")
                        ),
                    );
                } else {
                    options = options.backoff(Backoff::exponential(wait, max));
                }
            }
            _ => {}
        }

        if let Some(item) = field("timeout") {
            match self.duration(item, &what("timeout")) {
                Some(timeout) if timeout.is_zero() => {
                    self.error(
                        item.span(),
                        format!("{} must be more than zero", what("timeout")),
                    );
                }
                Some(timeout) => options = options.timeout(timeout),
                None => {}
            }
        }
        if let Some(cancellable) =
            field("cancellable").and_then(|v| self.boolean(v, &what("cancellable")))
        {
            options = options.cancellable(cancellable);
        }

        // Arguments of scheduled runs, environment, metadata.
        let args = match field("args") {
            Some(item) => match self.table(item, &what("args")) {
                Some(table) => self.json_object(table, &what("args")),
                None => None,
            },
            None => None,
        };
        let mut env = Vec::new();
        if let Some(table) = field("env").and_then(|v| self.table(v, &what("env"))) {
            for (key, value) in entries(table) {
                let key = key_str(key);
                match scalar_text(value.get_ref()) {
                    Some(text) => env.push((key.to_owned(), text)),
                    None => self.wrong_type(
                        value,
                        &format!("`env.{}` in {header}", header_key(key)),
                        "a string, number or boolean",
                    ),
                }
            }
        }
        let metadata = field("metadata")
            .and_then(|v| self.table(v, &what("metadata")))
            .and_then(|table| self.json_object(table, &what("metadata")));
        for (key, value) in metadata.unwrap_or_default() {
            options = options.metadata(key, value);
        }

        // The command and the exclusivity key.
        let command = match field("command") {
            None => {
                self.error(
                    name_key.span(),
                    format!("{header} has no `command` (required: the shell command to run)"),
                );
                None
            }
            Some(item) => match self.string(item, &what("command")) {
                Some(text) if text.trim().is_empty() => {
                    self.error(
                        item.span(),
                        format!("{} must not be empty", what("command")),
                    );
                    None
                }
                Some(text) => match ShellCommand::new(text) {
                    Ok(command) => Some(command),
                    Err(err) => {
                        self.error(item.span(), format!("{}: {err}", what("command")));
                        None
                    }
                },
                None => None,
            },
        };
        let exclusive = match field("exclusive") {
            Some(item) => match self.string(item, &what("exclusive")) {
                Some(text) => match Template::parse(text) {
                    Ok(template) => {
                        options = options.exclusive(text);
                        Some(template)
                    }
                    Err(err) => {
                        self.error(item.span(), format!("{}: {err}", what("exclusive")));
                        None
                    }
                },
                None => None,
            },
            None => None,
        };
        let command = command.map(|mut command| {
            if let Some(shell) = field("shell").and_then(|v| self.string(v, &what("shell"))) {
                command = command.shell(shell);
            }
            if let Some(dir) = field("workdir").and_then(|v| self.string(v, &what("workdir"))) {
                command = command.workdir(dir);
            }
            for (key, value) in &env {
                command = command.env(key.as_str(), value.as_str());
            }
            command
        });

        // The schedule.
        let scheduled = field("every").is_some() || field("cron").is_some();
        let schedule = self.schedule(&fields, &header);
        let mut schedule_description = None;
        if let Some((schedule, description)) = schedule {
            options = options.schedule(schedule);
            schedule_description = Some(description);
        }

        // Placeholders must be arguments of scheduled runs.
        let templates = [
            ("command", command.as_ref().map(|c| c.template())),
            ("exclusive", exclusive.as_ref()),
        ];
        for (key, template) in templates {
            let (Some(template), Some(item)) = (template, field(key)) else {
                continue;
            };
            let names = placeholders(template);
            match &args {
                Some(args) => {
                    let missing: Vec<&String> = names
                        .iter()
                        .filter(|n| !args.contains_key(n.as_str()))
                        .collect();
                    if !missing.is_empty() {
                        let known: Vec<&str> = args.keys().map(String::as_str).collect();
                        let known = if known.is_empty() {
                            "`args` is empty".to_owned()
                        } else {
                            format!("`args` has {}", known.join(", "))
                        };
                        let missing: Vec<String> =
                            missing.iter().map(|n| format!("{{{n}}}")).collect();
                        self.error(
                            item.span(),
                            format!(
                                "{} names {} but `args` has no such key ({known})",
                                what(key),
                                missing.join(", ")
                            ),
                        );
                    }
                }
                None if scheduled && field("args").is_none() && !names.is_empty() => {
                    let example: Vec<String> = names.iter().map(|n| format!("{n} = ...")).collect();
                    self.error(
                        item.span(),
                        format!(
                            "{} names {} but the task is scheduled without `args`; add args = {{ {} }}",
                            what(key),
                            names.iter().map(|n| format!("{{{n}}}")).collect::<Vec<_>>().join(", "),
                            example.join(", ")
                        ),
                    );
                }
                None => {}
            }
        }
        if let Some(args) = args {
            options = options.schedule_args(Value::Object(args));
        }

        if !valid || self.errors.len() > errors_before {
            return None;
        }
        Some(TaskConfig {
            name: name.to_owned(),
            line: self.line(&name_key.span()),
            command: command?,
            options,
            schedule_description,
        })
    }

    /// Builds the schedule of a task and its description; `None` when the task has none or a
    /// part is invalid (the problem is recorded).
    fn schedule(&mut self, fields: &[Field<'_, '_>], header: &str) -> Option<(Schedule, String)> {
        let what = |key: &str| format!("`{key}` in {header}");
        let find = |key: &str| fields.iter().find(|(k, _, _)| *k == key);
        let key_span = |key: &str| find(key).map_or(0..0, |f| f.1.span());
        let parts = ScheduleParts {
            every: find("every").map(|f| f.2),
            cron: find("cron").map(|f| f.2),
            timezone: find("timezone").map(|f| f.2),
            misfire: find("misfire").map(|f| f.2),
            overlap: find("overlap").map(|f| f.2),
            fire_on_start: find("fire_on_start").map(|f| f.2),
        };
        let mut ok = true;
        if parts.every.is_some() && parts.cron.is_some() {
            let later = if key_span("every").start > key_span("cron").start {
                "every"
            } else {
                "cron"
            };
            self.error(
                key_span(later),
                format!("`every` and `cron` in {header} are mutually exclusive: keep one"),
            );
            ok = false;
        }
        if parts.timezone.is_some() && parts.cron.is_none() {
            self.error(
                key_span("timezone"),
                format!("{} applies only to a `cron` schedule", what("timezone")),
            );
            ok = false;
        }
        if parts.every.is_none() && parts.cron.is_none() {
            for key in ["misfire", "overlap", "fire_on_start"] {
                if find(key).is_some() {
                    self.error(
                        key_span(key),
                        format!("{} needs a schedule (`every` or `cron`)", what(key)),
                    );
                }
            }
            return None;
        }

        let misfire = match parts.misfire {
            Some(item) => match self.string(item, &what("misfire")) {
                Some(text) => match text.parse::<MisfirePolicy>() {
                    Ok(policy) => Some(policy),
                    Err(err) => {
                        self.error(item.span(), format!("{}: {err}", what("misfire")));
                        ok = false;
                        None
                    }
                },
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let mut flag = |item: Option<&Item<'_>>, key: &str| match item {
            Some(item) => {
                let value = self.boolean(item, &what(key));
                ok &= value.is_some();
                value
            }
            None => None,
        };
        let overlap = flag(parts.overlap, "overlap");
        let fire_on_start = flag(parts.fire_on_start, "fire_on_start");

        let timezone = match parts.timezone {
            Some(item) => match self.string(item, &what("timezone")) {
                Some(tz) => match Schedule::cron_in("0 0 * * *", tz) {
                    Ok(_) => Some(tz),
                    Err(err) => {
                        // The pattern is a stand-in: show only what is wrong with the zone.
                        let message = match err {
                            tlo::Error::InvalidSchedule { message, .. } => message,
                            other => other.to_string(),
                        };
                        self.error(item.span(), format!("{}: {message}", what("timezone")));
                        ok = false;
                        None
                    }
                },
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };

        let built = if let Some(item) = parts.every {
            match self.duration(item, &what("every")) {
                Some(interval) => match Schedule::every(interval) {
                    Ok(schedule) => {
                        let text = match item.get_ref() {
                            DeValue::String(s) => s.to_string(),
                            _ => format!("{}s", interval.as_secs_f64()),
                        };
                        Some((schedule, format!("every {text}")))
                    }
                    Err(err) => {
                        self.error(item.span(), format!("{}: {err}", what("every")));
                        None
                    }
                },
                None => None,
            }
        } else if let Some(item) = parts.cron {
            match self.string(item, &what("cron")) {
                Some(pattern) => {
                    let schedule = match timezone {
                        Some(tz) => Schedule::cron_in(pattern, tz),
                        None => Schedule::cron(pattern),
                    };
                    match schedule {
                        Ok(schedule) => {
                            let description = schedule.describe();
                            Some((schedule, description))
                        }
                        Err(err) => {
                            self.error(item.span(), format!("{}: {err}", what("cron")));
                            None
                        }
                    }
                }
                None => None,
            }
        } else {
            None
        };

        let (mut schedule, description) = built?;
        if !ok {
            return None;
        }
        if let Some(policy) = misfire {
            schedule = schedule.misfire(policy);
        }
        if let Some(overlap) = overlap {
            schedule = schedule.allow_overlap(overlap);
        }
        if let Some(fire_on_start) = fire_on_start {
            schedule = schedule.fire_on_start(fire_on_start);
        }
        Some((schedule, description))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FULL: &str = r#"
[settings]
concurrency = 8
tick_interval = 0.5
stop_behavior = "Drain"
queue_concurrency = { emails = 2, reports = 1 }
queues = ["emails", "reports"]

[tasks.backup]
command = "pg_dump {db} > /tmp/{db}.sql"
description = "Nightly dump"
warning = "Heavy on the database"
queue = "maintenance"
priority = -5
max_attempts = 3
backoff = "exponential"
retry_wait = "10s"
retry_wait_max = "5m"
timeout = "30m"
exclusive = "{db}"
cancellable = false
cron = "0 3 * * *"
timezone = "Europe/Kyiv"
misfire = "fire_once"
overlap = false
fire_on_start = true
args = { db = "main" }
env = { PGHOST = "localhost", PGPORT = 5432 }
workdir = "/var/backups"
shell = "bash"
metadata = { team = "data", tier = 1 }

[tasks.ping]
command = "echo ping"
every = "10s"
backoff = "fixed"
retry_wait = 3
"#;

    fn parse(text: &str) -> Config {
        match Config::parse(text, None) {
            Ok(config) => config,
            Err(errors) => panic!("unexpected errors:\n{errors}"),
        }
    }

    /// The problems found in `text`, as `(line, message)`.
    fn problems(text: &str) -> Vec<(usize, String)> {
        match Config::parse(text, None) {
            Ok(config) => panic!("expected errors, parsed {config:?}"),
            Err(errors) => errors
                .errors
                .into_iter()
                .map(|e| (e.line, e.message))
                .collect(),
        }
    }

    /// Asserts exactly one problem, on `line`, whose message contains `needle`.
    #[track_caller]
    fn one_problem(text: &str, line: usize, needle: &str) {
        let found = problems(text);
        assert_eq!(found.len(), 1, "expected one problem, found {found:#?}");
        assert_eq!(found[0].0, line, "wrong line for {found:#?}");
        assert!(
            found[0].1.contains(needle),
            "message {:?} does not contain {needle:?}",
            found[0].1
        );
    }

    #[test]
    fn full_example_parses_into_options() {
        let config = parse(FULL);
        assert_eq!(
            config.settings,
            vec![
                ("concurrency".to_owned(), "8".to_owned(), 3),
                ("tick_interval".to_owned(), "0.5".to_owned(), 4),
                ("stop_behavior".to_owned(), "Drain".to_owned(), 5),
                (
                    "queue_concurrency".to_owned(),
                    "emails=2,reports=1".to_owned(),
                    6
                ),
                ("queues".to_owned(), "emails,reports".to_owned(), 7),
            ]
        );
        assert!(config.settings_builder().is_ok());
        assert_eq!(config.tasks.len(), 2);

        let backup = &config.tasks[0];
        assert_eq!(backup.name, "backup");
        assert_eq!(backup.line, 9);
        assert_eq!(
            backup.command.template().source(),
            "pg_dump {db} > /tmp/{db}.sql"
        );
        let options = &backup.options;
        assert_eq!(options.description.as_deref(), Some("Nightly dump"));
        assert_eq!(options.warning.as_deref(), Some("Heavy on the database"));
        assert_eq!(options.queue.as_deref(), Some("maintenance"));
        assert_eq!(options.priority, -5);
        assert_eq!(options.max_attempts, 3);
        assert_eq!(
            options.backoff,
            Backoff::exponential(Duration::from_secs(10), Duration::from_secs(300))
        );
        assert_eq!(options.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(options.exclusive.as_deref(), Some("{db}"));
        assert!(options.not_cancellable);
        assert!(options.schedule.is_some());
        assert_eq!(options.schedule_args, Some(json!({ "db": "main" })));
        assert_eq!(options.metadata.get("team"), Some(&json!("data")));
        assert_eq!(options.metadata.get("tier"), Some(&json!(1)));
        assert_eq!(
            backup.schedule_description.as_deref(),
            Some("cron `0 3 * * *` (Europe/Kyiv)")
        );

        let ping = &config.tasks[1];
        assert_eq!(ping.name, "ping");
        assert_eq!(ping.line, 33);
        assert_eq!(ping.options.backoff, Backoff::fixed(Duration::from_secs(3)));
        assert_eq!(ping.options.max_attempts, TaskOptions::new().max_attempts);
        assert!(!ping.options.not_cancellable);
        assert!(ping.options.schedule.is_some());
        assert_eq!(ping.schedule_description.as_deref(), Some("every 10s"));
        assert_eq!(ping.options.schedule_args, None);
    }

    #[test]
    fn defaults_when_only_a_command_is_given() {
        let config = parse("[tasks.a]\ncommand = \"echo a\"\n");
        let task = &config.tasks[0];
        assert_eq!(task.options.backoff, Backoff::default());
        assert!(task.options.schedule.is_none());
        assert!(task.schedule_description.is_none());
        assert!(task.options.queue.is_none());
        assert!(config.settings.is_empty());
    }

    #[test]
    fn example_file_parses() {
        let config = parse(include_str!("../../../../examples/tlo.toml"));
        let names: Vec<&str> = config.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["heartbeat", "nightly_report", "sync_account", "hello"]
        );
        assert_eq!(
            config.tasks[0].schedule_description.as_deref(),
            Some("every 10s")
        );
        assert!(config.tasks[1].options.schedule.is_some());
        assert!(config.tasks[2].options.exclusive.is_some());
        assert!(config.settings_builder().is_ok());
    }

    #[test]
    fn registers_every_task() {
        let config = parse(FULL);
        let tlo = Tlo::builder()
            .build_with_env(|_| None)
            .expect("default orchestrator");
        config.register(&tlo).expect("register");
        assert_eq!(tlo.registry().names(), ["backup", "ping"]);
        let backup = tlo.registry().require("backup").expect("backup registered");
        assert_eq!(backup.kind(), "shell");
        assert_eq!(backup.command(), Some("pg_dump {db} > /tmp/{db}.sql"));
    }

    #[test]
    fn syntax_error_has_its_line_and_stops() {
        let text = "[settings]\nconcurrency = 8\n\n[tasks.a]\ncommand = \nbogus = 1\n";
        let errors = Config::parse(text, Some(Path::new("tlo.toml"))).unwrap_err();
        assert_eq!(errors.errors.len(), 1, "{errors}");
        assert_eq!(errors.errors[0].line, 5);
        assert!(
            errors.errors[0].message.starts_with("TOML syntax error"),
            "{errors}"
        );
        assert!(errors.to_string().starts_with("tlo.toml:5:"), "{errors}");
    }

    #[test]
    fn duplicate_task_is_a_syntax_error_at_the_second_table() {
        one_problem(
            "[tasks.a]\ncommand = \"x\"\n[tasks.a]\ncommand = \"y\"\n",
            3,
            "duplicate key",
        );
    }

    #[test]
    fn unknown_top_level_table() {
        one_problem(
            "[setings]\nconcurrency = 1\n",
            1,
            "unknown top-level table `setings`",
        );
        one_problem("title = \"x\"\n", 1, "unknown top-level table `title`");
    }

    #[test]
    fn unknown_setting_key() {
        one_problem(
            "[settings]\nconcurrency = 2\nconcurency = 2\n",
            3,
            "unknown key `concurency` in [settings]",
        );
    }

    #[test]
    fn invalid_setting_value_reports_the_settings_message() {
        let text = "[settings]\n\nconcurrency = \"lots\"\n";
        let found = problems(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 3);
        assert!(found[0].1.contains("lots"), "{found:?}");
        one_problem(
            "[settings]\nconcurrency = 1979-05-27\n",
            2,
            "found a datetime",
        );
    }

    #[test]
    fn unknown_task_key_with_column_and_file_name() {
        let text = "[tasks.backup]\ncommand = \"echo\"\n    comand = \"pg_dump\"\n";
        let errors = Config::parse(text, Some(Path::new("tlo.toml"))).unwrap_err();
        assert_eq!(
            errors.errors,
            vec![ConfigError {
                line: 3,
                column: 5,
                message: format!(
                    "unknown key `comand` in [tasks.backup] (expected one of {})",
                    TASK_KEYS.join(", ")
                ),
            }]
        );
        assert!(
            errors
                .to_string()
                .starts_with("tlo.toml:3:5: unknown key `comand` in [tasks.backup] (expected one of command, description,"),
            "{errors}"
        );
    }

    #[test]
    fn wrong_value_types() {
        let text =
            "[tasks.a]\ncommand = \"echo\"\npriority = \"high\"\ncancellable = 1\nargs = \"x\"\n";
        let found = problems(text);
        assert_eq!(
            found,
            vec![
                (3, "`priority` in [tasks.a] must be an integer, found a string".to_owned()),
                (4, "`cancellable` in [tasks.a] must be a boolean (true or false), found an integer".to_owned()),
                (5, "`args` in [tasks.a] must be a table, found a string".to_owned()),
            ]
        );
        one_problem("[tasks]\na = \"echo\"\n", 2, "must be a table");
        one_problem("tasks = 3\n", 1, "`tasks` must be a table");
        one_problem(
            "[tasks.a]\ncommand = [\"echo\"]\n",
            2,
            "`command` in [tasks.a] must be a string",
        );
    }

    #[test]
    fn missing_command_is_reported_at_the_task_header() {
        one_problem(
            "\n[tasks.backup]\ndescription = \"x\"\n",
            2,
            "[tasks.backup] has no `command`",
        );
        one_problem("[tasks.a]\ncommand = \"  \"\n", 2, "must not be empty");
    }

    #[test]
    fn empty_task_name() {
        one_problem(
            "[tasks.\"\"]\ncommand = \"echo\"\n",
            1,
            "task name must not be empty",
        );
    }

    #[test]
    fn invalid_templates() {
        one_problem(
            "[tasks.a]\ncommand = \"echo {unclosed\"\n",
            2,
            "`command` in [tasks.a]",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nexclusive = \"{}\"\n",
            3,
            "`exclusive` in [tasks.a]",
        );
    }

    #[test]
    fn invalid_schedules() {
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\ncron = \"61 * * * *\"\n",
            3,
            "`cron` in [tasks.a]",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\ncron = \"0 3 * *\"\n",
            3,
            "expected 5 fields",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nevery = \"soon\"\n",
            3,
            "`every` in [tasks.a]",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\ntimeout = \"-\"\n",
            3,
            "`timeout` in [tasks.a]",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\ncron = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"\n",
            4,
            "`timezone` in [tasks.a]",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nevery = \"1m\"\nmisfire = \"sometimes\"\n",
            4,
            "`misfire` in [tasks.a]",
        );
    }

    #[test]
    fn every_with_cron_and_timezone_without_cron() {
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nevery = \"1h\"\ncron = \"0 3 * * *\"\n",
            4,
            "mutually exclusive",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nevery = \"1h\"\ntimezone = \"Europe/Kyiv\"\n",
            4,
            "applies only to a `cron` schedule",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nmisfire = \"skip\"\n",
            3,
            "needs a schedule",
        );
    }

    #[test]
    fn placeholders_must_be_keys_of_args() {
        one_problem(
            "[tasks.a]\ncommand = \"pg_dump {db} {table}\"\nargs = { db = \"main\" }\n",
            2,
            "{table}",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nexclusive = \"{user}\"\nargs = { db = \"main\" }\n",
            3,
            "{user}",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo {db}\"\nevery = \"1m\"\n",
            2,
            "scheduled without `args`",
        );
        // Without args and without a schedule, the arguments come with each submit.
        parse("[tasks.a]\ncommand = \"echo {db}\"\nexclusive = \"{db}\"\n");
    }

    #[test]
    fn attempts_and_retries() {
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nmax_attempts = 0\n",
            3,
            "at least 1",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nbackoff = \"linear\"\n",
            3,
            "\"fixed\" or \"exponential\"",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nbackoff = \"fixed\"\nretry_wait_max = \"1m\"\n",
            4,
            "only to backoff = \"exponential\"",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\nretry_wait = \"10m\"\nretry_wait_max = \"1m\"\n",
            4,
            "shorter than",
        );
        one_problem(
            "[tasks.a]\ncommand = \"echo\"\npriority = 3000000000\n",
            3,
            "out of range",
        );
        let config = parse("[tasks.a]\ncommand = \"echo\"\npriority = -10\n");
        assert_eq!(config.tasks[0].options.priority, -10);
    }

    #[test]
    fn several_problems_are_reported_together_in_file_order() {
        let text = r#"[settings]
concurrency = "lots"
colour = "blue"

[tasks.backup]
comand = "pg_dump main"

[tasks.report]
command = "echo {period}"
every = "1h"
cron = "0 3 * * *"
max_attempts = 0
args = { day = "today" }

[extra]
"#;
        let found: Vec<usize> = problems(text).into_iter().map(|(line, _)| line).collect();
        assert_eq!(found, [2, 3, 5, 6, 9, 11, 12, 15]);
    }

    #[test]
    fn load_reports_every_problem_with_the_file_name() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid.toml");
        let errors = Config::load(&path).unwrap_err();
        let lines: Vec<usize> = errors.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 5, 6, 9, 11]);
        let shown = errors.to_string();
        assert_eq!(shown.lines().count(), 5, "{shown}");
        for line in shown.lines() {
            assert!(line.starts_with(&format!("{}:", path.display())), "{line}");
        }
        assert!(
            shown.contains("invalid.toml:6:1: unknown key `comand`"),
            "{shown}"
        );
    }

    #[test]
    fn unreadable_file_is_one_error_naming_the_path() {
        let path = Path::new("/nonexistent/dir/tlo.toml");
        let errors = Config::load(path).unwrap_err();
        assert_eq!(errors.errors.len(), 1);
        assert_eq!(errors.errors[0].line, 0);
        assert!(
            errors.to_string().contains("/nonexistent/dir/tlo.toml"),
            "{errors}"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "[tasks.a]\ncommand = \"echo\"\nenv = { \"é\" = \"x\", V = [1] }\n";
        let errors = Config::parse(text, None).unwrap_err();
        assert_eq!(errors.errors.len(), 1, "{errors}");
        assert_eq!(
            (errors.errors[0].line, errors.errors[0].column),
            (3, 24),
            "{errors}"
        );
    }
}
