//! Workflow definitions: named DAGs of task nodes (flowrun), validated before anything runs.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use tlo_core::{Error, Result};

/// When a node may run, given how its dependencies ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TriggerRule {
    /// Every dependency ended `done` (the default; flowrun's behaviour).
    #[default]
    AllSuccess,
    /// Every dependency ended, however: for clean-up nodes.
    AllDone,
    /// At least one dependency failed: for alert nodes.
    OneFailed,
}

impl TriggerRule {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllDone => "all_done",
            TriggerRule::OneFailed => "one_failed",
        }
    }
}

impl FromStr for TriggerRule {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        [
            TriggerRule::AllSuccess,
            TriggerRule::AllDone,
            TriggerRule::OneFailed,
        ]
        .into_iter()
        .find(|rule| rule.as_str() == text.trim())
        .ok_or_else(|| Error::InvalidSetting {
            name: "trigger rule".into(),
            value: text.into(),
            expected: "all_success, all_done or one_failed".into(),
        })
    }
}

/// One node of a workflow: a task to run, after its dependencies.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node's name, unique in its workflow.
    pub name: String,
    /// The registered task it runs.
    pub task: String,
    /// Names of the nodes it runs after.
    pub depends_on: Vec<String>,
    /// Arguments for the task (the dependencies' results are added by name at run time).
    pub args: Value,
    /// A per-node timeout, overriding the task's.
    pub timeout: Option<Duration>,
    /// Attempts in all, overriding the task's.
    pub max_attempts: Option<u32>,
    /// When it may run, given its dependencies' ends.
    pub trigger: TriggerRule,
}

impl Node {
    /// A node running `task`, with no dependencies and `{}` arguments.
    pub fn new(name: impl Into<String>, task: impl Into<String>) -> Self {
        Node {
            name: name.into(),
            task: task.into(),
            depends_on: Vec::new(),
            args: Value::Object(Default::default()),
            timeout: None,
            max_attempts: None,
            trigger: TriggerRule::default(),
        }
    }
    /// Runs after these nodes.
    pub fn after<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.depends_on.extend(nodes.into_iter().map(Into::into));
        self
    }
    /// Sets the task's arguments.
    pub fn args(mut self, args: Value) -> Self {
        self.args = args;
        self
    }
    /// Sets a per-node timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Sets the attempts in all.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }
    /// Sets the trigger rule.
    pub fn trigger(mut self, rule: TriggerRule) -> Self {
        self.trigger = rule;
        self
    }
}

/// A validated workflow: no cycle, no missing dependency, no duplicate node; nodes in a
/// topological order (each after all of its dependencies).
///
/// ```
/// use tlo::{Node, TriggerRule, Workflow};
/// let etl = Workflow::builder("etl")
///     .node(Node::new("extract", "extract"))
///     .node(Node::new("transform", "transform").after(["extract"]))
///     .node(Node::new("load", "load").after(["transform"]))
///     .node(Node::new("alert", "notify").after(["load"]).trigger(TriggerRule::OneFailed))
///     .build()
///     .unwrap();
/// assert_eq!(etl.layers()[1], vec!["transform"]);
/// assert!(etl.to_dot().contains("\"extract\" -> \"transform\""));
///
/// let err = Workflow::builder("loop")
///     .node(Node::new("a", "t").after(["b"]))
///     .node(Node::new("b", "t").after(["a"]))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.to_string(), "workflow `loop` has a cycle: a -> b -> a");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    name: String,
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
}

/// Collects nodes; [`build`](Self::build) validates them.
#[derive(Debug, Clone, Default)]
pub struct WorkflowBuilder {
    name: String,
    nodes: Vec<Node>,
}

impl WorkflowBuilder {
    /// Adds a node.
    pub fn node(mut self, node: Node) -> Self {
        self.nodes.push(node);
        self
    }

    /// Validates: duplicates, then missing dependencies, then cycles (naming the nodes on one).
    pub fn build(self) -> Result<Workflow> {
        let name = self.name;
        let mut index = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if index.insert(node.name.clone(), i).is_some() {
                return Err(Error::DuplicateNode {
                    workflow: name,
                    node: node.name.clone(),
                });
            }
        }
        for node in &self.nodes {
            if let Some(missing) = node.depends_on.iter().find(|d| !index.contains_key(*d)) {
                return Err(Error::MissingDependency {
                    workflow: name,
                    node: node.name.clone(),
                    dependency: missing.clone(),
                });
            }
        }
        let order =
            topological_order(&self.nodes, &index).map_err(|nodes| Error::WorkflowCycle {
                workflow: name.clone(),
                nodes,
            })?;
        let nodes: Vec<Node> = order.into_iter().map(|i| self.nodes[i].clone()).collect();
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (node.name.clone(), i))
            .collect();
        Ok(Workflow { name, nodes, index })
    }
}

/// Kahn's algorithm, in definition order among ready nodes; on a cycle, the nodes walking it.
fn topological_order(
    nodes: &[Node],
    index: &HashMap<String, usize>,
) -> std::result::Result<Vec<usize>, Vec<String>> {
    let mut waiting: Vec<usize> = nodes.iter().map(|n| n.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        for dependency in &node.depends_on {
            dependents[index[dependency]].push(i);
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &next in &dependents[i] {
            waiting[next] -= 1;
            if waiting[next] == 0 {
                ready.push_back(next);
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    // Walk dependencies from a node left waiting until a node repeats: that loop is a cycle.
    let mut path: Vec<usize> = Vec::new();
    let mut at = (0..nodes.len()).find(|&i| waiting[i] > 0).unwrap_or(0);
    while !path.contains(&at) {
        path.push(at);
        at = nodes[at]
            .depends_on
            .iter()
            .map(|d| index[d])
            .find(|&d| waiting[d] > 0)
            .unwrap_or(at);
    }
    let start = path.iter().position(|&i| i == at).unwrap_or(0);
    let mut cycle: Vec<String> = path[start..]
        .iter()
        .rev()
        .map(|&i| nodes[i].name.clone())
        .collect();
    // Start the cycle at its first node in definition order, for stable messages.
    let first = (0..cycle.len())
        .min_by_key(|&k| index[&cycle[k]])
        .unwrap_or(0);
    cycle.rotate_left(first);
    cycle.push(cycle[0].clone());
    Err(cycle)
}

impl Workflow {
    /// A builder for the workflow `name`.
    pub fn builder(name: impl Into<String>) -> WorkflowBuilder {
        WorkflowBuilder {
            name: name.into(),
            nodes: Vec::new(),
        }
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Nodes in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Where the node named `name` stands in [`nodes`](Self::nodes).
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Nodes by depth: layer 0 has no dependencies; a node's layer is one more than its
    /// deepest dependency's.
    pub fn layers(&self) -> Vec<Vec<&str>> {
        let mut depth = vec![0usize; self.nodes.len()];
        let mut layers: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            depth[i] = node
                .depends_on
                .iter()
                .map(|d| depth[self.index[d]] + 1)
                .max()
                .unwrap_or(0);
            layers.entry(depth[i]).or_default().push(&node.name);
        }
        layers.into_values().collect()
    }

    /// A text rendering, one line per node by layer (`tlo dag NAME`).
    pub fn render_text(&self) -> String {
        let mut out = format!("workflow {} ({} nodes)\n", self.name, self.nodes.len());
        for (depth, layer) in self.layers().into_iter().enumerate() {
            for name in layer {
                let node = &self.nodes[self.index[name]];
                let _ = write!(
                    out,
                    "{:indent$}{} [{}]",
                    "",
                    node.name,
                    node.task,
                    indent = 2 + 2 * depth
                );
                if !node.depends_on.is_empty() {
                    let _ = write!(out, " <- {}", node.depends_on.join(", "));
                }
                if node.trigger != TriggerRule::AllSuccess {
                    let _ = write!(out, " ({})", node.trigger.as_str());
                }
                out.push('\n');
            }
        }
        out
    }

    /// Graphviz DOT: one box per node (labelled with its task), one edge per dependency.
    pub fn to_dot(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = format!(
            "digraph {} {{\n  rankdir=LR;\n  node [shape=box];\n",
            quote(&self.name)
        );
        for node in &self.nodes {
            let mut label = format!("{}\\n{}", node.name, node.task);
            if node.trigger != TriggerRule::AllSuccess {
                let _ = write!(label, "\\n({})", node.trigger.as_str());
            }
            let _ = writeln!(
                out,
                "  {} [label={}];",
                quote(&node.name),
                quote(&label).replace("\\\\n", "\\n")
            );
        }
        for node in &self.nodes {
            for dependency in &node.depends_on {
                let _ = writeln!(out, "  {} -> {};", quote(dependency), quote(&node.name));
            }
        }
        out.push_str("}\n");
        out
    }
}

impl fmt::Display for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diamond() -> Workflow {
        Workflow::builder("diamond")
            .node(Node::new("d", "t").after(["b", "c"]))
            .node(Node::new("b", "t").after(["a"]))
            .node(Node::new("c", "t").after(["a"]))
            .node(Node::new("a", "t"))
            .build()
            .unwrap()
    }

    #[test]
    fn nodes_come_in_topological_order_and_layers() {
        let wf = diamond();
        let names: Vec<&str> = wf.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(wf.layers(), vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
        assert_eq!(wf.node("d").unwrap().depends_on, ["b", "c"]);
    }

    #[test]
    fn cycles_name_their_nodes() {
        let err = Workflow::builder("w")
            .node(Node::new("start", "t"))
            .node(Node::new("x", "t").after(["start", "z"]))
            .node(Node::new("y", "t").after(["x"]))
            .node(Node::new("z", "t").after(["y"]))
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "workflow `w` has a cycle: x -> y -> z -> x"
        );
        let err = Workflow::builder("w")
            .node(Node::new("self", "t").after(["self"]))
            .build()
            .unwrap_err();
        assert_eq!(err.to_string(), "workflow `w` has a cycle: self -> self");
    }

    #[test]
    fn missing_dependencies_and_duplicates_are_named() {
        let err = Workflow::builder("w")
            .node(Node::new("a", "t").after(["ghost"]))
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "workflow `w`: node `a` depends on missing node `ghost`"
        );
        let err = Workflow::builder("w")
            .node(Node::new("a", "t"))
            .node(Node::new("a", "u"))
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::DuplicateNode { ref node, .. } if node == "a"));
    }

    #[test]
    fn renders_text_and_dot() {
        let wf = Workflow::builder("etl")
            .node(Node::new("extract", "pull"))
            .node(
                Node::new("alert", "notify")
                    .after(["extract"])
                    .trigger(TriggerRule::OneFailed),
            )
            .build()
            .unwrap();
        assert_eq!(
            wf.render_text(),
            "workflow etl (2 nodes)\n  extract [pull]\n    alert [notify] <- extract (one_failed)\n"
        );
        let dot = wf.to_dot();
        assert!(dot.starts_with("digraph \"etl\" {"), "{dot}");
        assert!(dot.contains("\"extract\" -> \"alert\";"), "{dot}");
        assert!(
            dot.contains("label=\"alert\\nnotify\\n(one_failed)\""),
            "{dot}"
        );
        assert_eq!(
            "all_done".parse::<TriggerRule>().unwrap(),
            TriggerRule::AllDone
        );
        assert!("sometimes".parse::<TriggerRule>().is_err());
    }
}
