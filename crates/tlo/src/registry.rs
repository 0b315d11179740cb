//! The task registry: names to definitions.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tlo_core::{Error, Result};

use crate::context::TaskContext;
use crate::shell::ShellCommand;
use crate::task::{
    Handler, TaskDef, TaskOptions, TaskRef, Validator, async_handler, blocking_handler, validator,
};
use crate::template::Template;

/// Every registered task, by name. Shared by the orchestrator, its workers and its scheduler.
///
/// ```
/// use tlo::{TaskOptions, TaskRegistry};
/// let registry = TaskRegistry::new();
/// let double = registry
///     .register("double", TaskOptions::new(), |_ctx, n: i64| async move { Ok::<_, String>(n * 2) })
///     .unwrap();
/// assert_eq!(double.name(), "double");
/// assert!(registry.register("double", TaskOptions::new(), |_ctx, n: i64| async move {
///     Ok::<_, String>(n)
/// }).is_err());
/// ```
#[derive(Default)]
pub struct TaskRegistry {
    tasks: RwLock<HashMap<Arc<str>, Arc<TaskDef>>>,
}

impl fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl TaskRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an async handler taking typed arguments `A` and returning `Result<O, E>`.
    pub fn register<A, O, E, F, Fut>(
        &self,
        name: &str,
        options: TaskOptions,
        handler: F,
    ) -> Result<TaskRef<A, O>>
    where
        F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        A: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        E: fmt::Display + 'static,
    {
        let name: Arc<str> = name.into();
        let handler = async_handler(name.clone(), handler);
        self.insert(name, handler, options, Some(validator::<A>()))
            .map(TaskRef::new)
    }

    /// Registers a blocking handler; it runs on a bounded thread pool, never on the async workers.
    pub fn register_blocking<A, O, E, F>(
        &self,
        name: &str,
        options: TaskOptions,
        handler: F,
    ) -> Result<TaskRef<A, O>>
    where
        F: Fn(TaskContext, A) -> Result<O, E> + Send + Sync + 'static,
        A: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        E: fmt::Display + 'static,
    {
        let name: Arc<str> = name.into();
        let handler = blocking_handler(name.clone(), handler);
        self.insert(name, handler, options, Some(validator::<A>()))
            .map(TaskRef::new)
    }

    /// Registers a shell command run as a subprocess; its `{name}` placeholders are filled from
    /// the job's arguments (shell-quoted).
    pub fn register_shell(
        &self,
        name: &str,
        options: TaskOptions,
        command: ShellCommand,
    ) -> Result<TaskRef<Value, Value>> {
        let name: Arc<str> = name.into();
        self.insert(name, Handler::Shell(command), options, None)
            .map(TaskRef::new)
    }

    fn insert(
        &self,
        name: Arc<str>,
        handler: Handler,
        options: TaskOptions,
        validate: Option<Arc<Validator>>,
    ) -> Result<Arc<str>> {
        if name.is_empty() {
            return Err(Error::InvalidSetting {
                name: "task name".into(),
                value: String::new(),
                expected: "a non-empty name".into(),
            });
        }
        let exclusive = options
            .exclusive
            .as_deref()
            .map(Template::parse)
            .transpose()?;
        let def = TaskDef {
            name: name.clone(),
            handler,
            options,
            exclusive,
            validate,
        };
        let mut tasks = self.tasks.write();
        if tasks.contains_key(&name) {
            return Err(Error::DuplicateTask(name.to_string()));
        }
        tasks.insert(name.clone(), Arc::new(def));
        Ok(name)
    }

    /// The definition of `name`.
    pub fn get(&self, name: &str) -> Option<Arc<TaskDef>> {
        self.tasks.read().get(name).cloned()
    }

    /// The definition of `name`, or [`Error::UnknownTask`].
    pub fn require(&self, name: &str) -> Result<Arc<TaskDef>> {
        self.get(name)
            .ok_or_else(|| Error::UnknownTask(name.to_owned()))
    }

    /// All task names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tasks.read().keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    /// All definitions, sorted by name.
    pub fn tasks(&self) -> Vec<Arc<TaskDef>> {
        let mut tasks: Vec<Arc<TaskDef>> = self.tasks.read().values().cloned().collect();
        tasks.sort_by(|a, b| a.name.cmp(&b.name));
        tasks
    }
}
