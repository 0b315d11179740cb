//! # tlo
//!
//! Background work for Rust: register tasks, submit jobs, run workers and schedules, on a store
//! that starts in memory and grows into a durable database without a rewrite.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use serde::{Deserialize, Serialize};
//! use tlo::{TaskOptions, Tlo};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Email { to: String }
//!
//! let tlo = Tlo::builder().build()?;
//! let send = tlo.register("send_email", TaskOptions::new().max_attempts(3), |ctx, email: Email| async move {
//!     ctx.report_progress(50.0, format!("sending to {}", email.to));
//!     Ok::<_, String>(format!("sent to {}", email.to))
//! })?;
//! tlo.start()?;
//! let job = tlo.submit(&send, Email { to: "ada@example.com".into() }).await?;
//! assert_eq!(job.result().await?, "sent to ada@example.com");
//! tlo.stop().await?;
//! # Ok::<(), tlo::Error>(()) }).unwrap();
//! ```
//!
//! See `ARCHITECTURE.md` for how a job flows through the crates.

mod batch;
mod builder;
mod children;
mod context;
mod engine;
mod events;
mod handle;
mod maintenance;
mod metrics;
mod process;
mod registry;
mod runner;
mod schedule;
mod scheduler;
mod settings;
mod shell;
mod task;
mod template;
#[allow(clippy::module_inception)]
mod tlo;
mod worker;
mod workflow;
mod workflow_run;

pub use builder::TloBuilder;
pub use children::{ChildOptions, ChildOutcome, ChildProgress, ProgressCallback};
pub use context::{Services, TaskContext};
pub use engine::SubmitOptions;
pub use events::{Hooks, JobEvent, JobEventKind};
pub use handle::{JobEvents, JobHandle};
pub use metrics::{DurationStats, MetricsSnapshot, TaskMetrics};
pub use process::{
    ControlError, LAUNCH_BLOCK_TASK, LaunchBlock, PROCESS_METADATA_KEY, ProcessDefinition,
    ResyncReport,
};
pub use registry::TaskRegistry;
pub use schedule::{MAX_CATCH_UP, MisfirePolicy, Schedule, SlotDecision};
pub use settings::{
    LockerKind, QueueKind, RegistryKind, Settings, SettingsBuilder, StopBehavior, StoreKind,
};
pub use shell::ShellCommand;
pub use task::{Backoff, Fatal, TaskDef, TaskOptions, TaskRef};
pub use template::Template;
pub use tlo::Tlo;
pub use workflow::{Node, TriggerRule, Workflow, WorkflowBuilder};
pub use workflow_run::{
    COORDINATOR_TASK, NodeReport, RunOptions, TRIGGER_NOT_MET, UPSTREAM_FAILED, WorkflowReport,
    WorkflowRun,
};

pub use tlo_core::{
    CancelOutcome, DateTime, Error, Job, JobFilter, JobId, JobState, Locker, LogEntry, LogLevel,
    Progress, Result, Store, Utc,
};
pub use tlo_memory::{MemoryLocker, MemoryStore};
#[cfg(feature = "postgres")]
pub use tlo_postgres::{PostgresLocker, PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use tlo_sqlite::{SqliteLocker, SqliteStore};
