//! `[workflows.NAME]` tables: DAGs of task nodes (or inline shell commands).
//!
//! ```toml
//! [workflows.etl]
//! parallelism = 2
//!
//! [workflows.etl.nodes.extract]
//! task = "extract"                  # a task of [tasks] ...
//!
//! [workflows.etl.nodes.report]
//! command = "echo report"           # ... or an inline shell command
//! after = ["extract"]
//! trigger = "all_done"              # all_success (default), all_done, one_failed
//! timeout = "5m"
//! max_attempts = 2
//! args = { day = "today" }
//! ```

use std::fmt;

use tlo::{Node, ShellCommand, TriggerRule, Workflow};
use toml::de::{DeTable, DeValue};

use super::{Checker, Item, Key, entries, header_key, key_str};

const WORKFLOW_KEYS: &[&str] = &["description", "parallelism", "nodes"];
const NODE_KEYS: &[&str] = &[
    "task",
    "command",
    "after",
    "args",
    "timeout",
    "max_attempts",
    "trigger",
];

/// A validated `[workflows.NAME]` table.
#[derive(Clone)]
pub(crate) struct WorkflowConfig {
    /// The workflow, validated (no cycle, no missing dependency).
    pub(crate) workflow: Workflow,
    /// 1-based line of its table.
    pub(crate) line: usize,
    /// What it does.
    pub(crate) description: Option<String>,
    /// Default parallelism limit of its runs.
    pub(crate) parallelism: Option<usize>,
    /// Shell tasks its inline `command` nodes need, by task name.
    pub(crate) inline_tasks: Vec<(String, ShellCommand)>,
    /// Task names its nodes use, with the line naming each (checked against `[tasks]`).
    pub(crate) task_refs: Vec<(String, usize, usize)>,
}

impl fmt::Debug for WorkflowConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowConfig")
            .field("name", &self.workflow.name())
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl Checker<'_> {
    /// Checks one `[workflows.NAME]` table; every problem is recorded with its line.
    pub(super) fn workflow(
        &mut self,
        name_key: &Key<'_>,
        item: &Item<'_>,
    ) -> Option<WorkflowConfig> {
        let name = key_str(name_key);
        let header = format!("[workflows.{}]", header_key(name));
        let DeValue::Table(table) = item.get_ref() else {
            self.wrong_type(item, &format!("workflow `{name}`"), "a table");
            return None;
        };
        let errors_before = self.errors.len();
        let mut description = None;
        let mut parallelism = None;
        let mut nodes_table: Option<&DeTable<'_>> = None;
        for (key, value) in entries(table) {
            let what = format!("`{}` in {header}", key_str(key));
            match key_str(key) {
                "description" => description = self.string(value, &what).map(str::to_owned),
                "parallelism" => match self.integer(value, &what) {
                    Some(n) if n >= 1 => parallelism = Some(n as usize),
                    Some(_) => self.error(value.span(), format!("{what} must be at least 1")),
                    None => {}
                },
                "nodes" => nodes_table = self.table(value, &what),
                other => self.error(
                    key.span(),
                    format!(
                        "unknown key `{other}` in {header} (expected one of {})",
                        WORKFLOW_KEYS.join(", ")
                    ),
                ),
            }
        }
        let Some(nodes_table) = nodes_table else {
            self.error(
                name_key.span(),
                format!(
                    "{header} has no nodes ([workflows.{}.nodes.NAME])",
                    header_key(name)
                ),
            );
            return None;
        };
        let mut builder = Workflow::builder(name);
        let mut inline_tasks = Vec::new();
        let mut task_refs = Vec::new();
        for (node_key, node_item) in entries(nodes_table) {
            if let Some((node, inline)) = self.node(name, node_key, node_item) {
                match inline {
                    Some(command) => inline_tasks.push((node.task.clone(), command)),
                    None => {
                        let (line, column) = self.position(node_key.span().start);
                        task_refs.push((node.task.clone(), line, column));
                    }
                }
                builder = builder.node(node);
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        match builder.build() {
            Ok(workflow) => Some(WorkflowConfig {
                workflow,
                line: self.line(&name_key.span()),
                description,
                parallelism,
                inline_tasks,
                task_refs,
            }),
            Err(err) => {
                self.error(name_key.span(), err.to_string());
                None
            }
        }
    }

    fn node(
        &mut self,
        workflow: &str,
        name_key: &Key<'_>,
        item: &Item<'_>,
    ) -> Option<(Node, Option<ShellCommand>)> {
        let name = key_str(name_key);
        let header = format!(
            "[workflows.{}.nodes.{}]",
            header_key(workflow),
            header_key(name)
        );
        let DeValue::Table(table) = item.get_ref() else {
            self.wrong_type(item, &format!("node `{name}`"), "a table");
            return None;
        };
        let errors_before = self.errors.len();
        let mut task = None;
        let mut command = None;
        let mut node = Node::new(name, "");
        for (key, value) in entries(table) {
            let what = format!("`{}` in {header}", key_str(key));
            match key_str(key) {
                "task" => task = self.string(value, &what).map(str::to_owned),
                "command" => {
                    if let Some(text) = self.string(value, &what) {
                        match ShellCommand::new(text) {
                            Ok(cmd) => command = Some(cmd),
                            Err(err) => self.error(value.span(), format!("{what}: {err}")),
                        }
                    }
                }
                "after" => match value.get_ref() {
                    DeValue::Array(items) => {
                        for dep in items.iter() {
                            match dep.get_ref() {
                                DeValue::String(dep) => node.depends_on.push(dep.to_string()),
                                _ => self.wrong_type(dep, &what, "a list of node names"),
                            }
                        }
                    }
                    _ => self.wrong_type(value, &what, "a list of node names"),
                },
                "args" => {
                    if let Some(args) = self.json(value, &what) {
                        node.args = args;
                    }
                }
                "timeout" => {
                    if let Some(timeout) = self.duration(value, &what) {
                        node.timeout = Some(timeout);
                    }
                }
                "max_attempts" => match self.integer(value, &what) {
                    Some(n) if n >= 1 => node.max_attempts = Some(n as u32),
                    Some(_) => self.error(value.span(), format!("{what} must be at least 1")),
                    None => {}
                },
                "trigger" => {
                    if let Some(text) = self.string(value, &what) {
                        match text.parse::<TriggerRule>() {
                            Ok(rule) => node.trigger = rule,
                            Err(_) => self.error(
                                value.span(),
                                format!("{what} must be all_success, all_done or one_failed"),
                            ),
                        }
                    }
                }
                other => self.error(
                    key.span(),
                    format!(
                        "unknown key `{other}` in {header} (expected one of {})",
                        NODE_KEYS.join(", ")
                    ),
                ),
            }
        }
        let inline = match (task, command) {
            (Some(task), None) => {
                node.task = task;
                None
            }
            (None, Some(command)) => {
                node.task = format!("{workflow}.{name}");
                Some(command)
            }
            (Some(_), Some(_)) => {
                self.error(
                    name_key.span(),
                    format!("{header} has both `task` and `command`; give one"),
                );
                None
            }
            (None, None) => {
                self.error(
                    name_key.span(),
                    format!("{header} needs a `task` or a `command`"),
                );
                None
            }
        };
        (self.errors.len() == errors_before).then_some((node, inline))
    }
}
