//! # tlo-core
//!
//! The backend-neutral heart of [tlo](https://docs.rs/tlo): the job model, the state machine,
//! the one [`Error`] type, and the contracts every backend implements: [`Store`] for jobs and
//! [`Locker`] for exclusivity keys.
//!
//! Applications use the `tlo` crate; this crate is for store and locker implementers.

pub mod claimed;
mod error;
mod job;
mod locker;
mod state;
mod store;
mod timestamp;
pub mod transition;

pub use error::{Error, Result};
pub use job::{
    AttemptRecord, Job, JobFilter, JobId, JobIdHasher, JobIdMap, JobIdSet, LogEntry, LogLevel,
    NewJob, PROCESS_KEY_PREFIX, Progress,
};
pub use locker::Locker;
pub use state::JobState;
pub use store::{CancelOutcome, ClaimRequest, Completion, Enqueued, Outcome, QueueDemand, Store};

/// Re-exported so implementers use the same versions.
pub use async_trait::async_trait;
/// Re-exported time types used across the contracts.
pub use chrono::{DateTime, Utc};
