//! `TloBuilder`: settings, store, locker, services and hooks, assembled into a [`Tlo`].

use std::fmt;
use std::sync::Arc;

use tlo_core::{Error, Job, Locker, Result, Store};
use tlo_memory::{MemoryLocker, MemoryStore};

use crate::context::Services;
use crate::engine::Engine;
use crate::events::Hooks;
use crate::registry::TaskRegistry;
use crate::settings::{LockerKind, Settings, SettingsBuilder, StoreKind};
use crate::tlo::Tlo;

/// Builds a [`Tlo`]: settings, store, locker, services and hooks.
#[derive(Default)]
pub struct TloBuilder {
    settings: SettingsBuilder,
    store: Option<Arc<dyn Store>>,
    locker: Option<Arc<dyn Locker>>,
    services: Services,
    hooks: Hooks,
}

impl fmt::Debug for TloBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TloBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TloBuilder {
    /// Explicit settings; they win over `TLO_*` variables, which win over defaults.
    pub fn settings(mut self, settings: SettingsBuilder) -> Self {
        self.settings = settings;
        self
    }
    /// Uses this store instead of the one the settings name.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }
    /// Uses this shared store.
    pub fn store_arc(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }
    /// Uses this locker instead of the one the settings name.
    pub fn locker(mut self, locker: impl Locker) -> Self {
        self.locker = Some(Arc::new(locker));
        self
    }
    /// Makes `service` available to handlers through [`TaskContext::service`](crate::TaskContext::service).
    pub fn service<T: std::any::Any + Send + Sync>(mut self, service: T) -> Self {
        self.services.insert(service);
        self
    }
    /// Called when an attempt starts.
    pub fn on_task_started(mut self, hook: impl Fn(&Job) + Send + Sync + 'static) -> Self {
        self.hooks.started.push(Arc::new(hook));
        self
    }
    /// Called when a job ends `done`.
    pub fn on_task_succeeded(mut self, hook: impl Fn(&Job) + Send + Sync + 'static) -> Self {
        self.hooks.succeeded.push(Arc::new(hook));
        self
    }
    /// Called when a job ends `failed`.
    pub fn on_task_failed(mut self, hook: impl Fn(&Job) + Send + Sync + 'static) -> Self {
        self.hooks.failed.push(Arc::new(hook));
        self
    }
    /// Called when an attempt failed and another is scheduled.
    pub fn on_task_retried(mut self, hook: impl Fn(&Job) + Send + Sync + 'static) -> Self {
        self.hooks.retried.push(Arc::new(hook));
        self
    }
    /// Called when a job ends `cancelled`.
    pub fn on_task_cancelled(mut self, hook: impl Fn(&Job) + Send + Sync + 'static) -> Self {
        self.hooks.cancelled.push(Arc::new(hook));
        self
    }

    /// Resolves the settings (reading `TLO_*` variables), connects to the store they name (any
    /// store, PostgreSQL included), and builds the orchestrator.
    pub async fn connect(self) -> Result<Tlo> {
        self.connect_with_env(|name| std::env::var(name).ok()).await
    }

    /// Like [`connect`](Self::connect) with an explicit environment lookup.
    pub async fn connect_with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Tlo> {
        let settings = std::mem::take(&mut self.settings).build_with_env(env)?;
        let opened = match &self.store {
            Some(store) => (store.clone(), None),
            None => open_store_async(&settings).await?,
        };
        self.assemble(settings, opened)
    }

    /// Resolves the settings (reading `TLO_*` variables) and builds the orchestrator. Stores
    /// that need a network connection (PostgreSQL) are opened by [`connect`](Self::connect).
    pub fn build(self) -> Result<Tlo> {
        self.build_with_env(|name| std::env::var(name).ok())
    }

    /// Like [`build`](Self::build) with an explicit environment lookup (for tests and tools).
    pub fn build_with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Tlo> {
        let settings = std::mem::take(&mut self.settings).build_with_env(env)?;
        let opened = match &self.store {
            Some(store) => (store.clone(), None),
            None => open_store(&settings)?,
        };
        self.assemble(settings, opened)
    }

    /// Chooses the locker and wires the engine around the opened store.
    fn assemble(self, settings: Settings, (store, store_locker): Opened) -> Result<Tlo> {
        let locker = match (self.locker, settings.locker) {
            (Some(locker), _) => locker,
            (None, LockerKind::Memory) => Arc::new(MemoryLocker::new()) as Arc<dyn Locker>,
            (None, LockerKind::Auto | LockerKind::Store) => match store_locker {
                Some(locker) => locker,
                None if settings.locker == LockerKind::Store && store.is_shared() => {
                    return Err(Error::InvalidSetting {
                        name: "TLO_LOCKER".into(),
                        value: "store".into(),
                        expected: "auto or memory when the store is passed in: pass its locker with TloBuilder::locker"
                            .into(),
                    });
                }
                None => Arc::new(MemoryLocker::new()),
            },
        };
        let registry = Arc::new(TaskRegistry::new());
        let (hooks, services) = (self.hooks, self.services);
        let engine = Arc::new_cyclic(|this| {
            Engine::new(
                settings,
                store,
                locker,
                registry,
                hooks,
                services,
                this.clone(),
            )
        });
        Ok(Tlo::from_engine(engine))
    }
}

type Opened = (Arc<dyn Store>, Option<Arc<dyn Locker>>);

/// Opens the store the settings name, with its own locker when it has one.
fn open_store(settings: &Settings) -> Result<Opened> {
    match settings.store {
        StoreKind::Memory => Ok((Arc::new(MemoryStore::new()), None)),
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => {
            let url = settings.database_url.as_deref().unwrap_or("tlo.db");
            let store = tlo_sqlite::SqliteStore::open_url(url)?;
            let locker = Arc::new(store.locker()) as Arc<dyn Locker>;
            Ok((Arc::new(store), Some(locker)))
        }
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => Err(Error::InvalidSetting {
            name: "TLO_TASK_STATE_STORE".into(),
            value: "postgres".into(),
            expected: "memory or sqlite with TloBuilder::build; postgres needs TloBuilder::connect().await"
                .into(),
        }),
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(other)),
    }
}

fn not_compiled(kind: StoreKind) -> Error {
    let mut compiled = vec!["memory"];
    if cfg!(feature = "sqlite") {
        compiled.push("sqlite");
    }
    if cfg!(feature = "postgres") {
        compiled.push("postgres");
    }
    Error::InvalidSetting {
        name: "TLO_TASK_STATE_STORE".into(),
        value: kind.to_string(),
        expected: format!("a store compiled into this build: {}", compiled.join(", ")),
    }
}

/// Like [`open_store`], for stores that connect over the network too.
async fn open_store_async(settings: &Settings) -> Result<Opened> {
    match settings.store {
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => {
            let url = settings
                .database_url
                .as_deref()
                .ok_or_else(|| Error::InvalidSetting {
                    name: "TLO_DATABASE_URL".into(),
                    value: String::new(),
                    expected: "a postgres:// URL when TLO_TASK_STATE_STORE=postgres".into(),
                })?;
            let options = tlo_postgres::PostgresOptions {
                schema: settings.database_schema.clone(),
                migrate: settings.migrate,
                pool_size: (settings.concurrency + 4).min(32),
                listen: settings.postgres_listen,
            };
            let store = tlo_postgres::PostgresStore::connect_with(url, options).await?;
            let locker = Arc::new(store.locker()) as Arc<dyn Locker>;
            Ok((Arc::new(store), Some(locker)))
        }
        _ => open_store(settings),
    }
}
