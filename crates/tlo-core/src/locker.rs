//! The `Locker` contract: exclusivity keys held by one job at a time.

use std::time::Duration;

use async_trait::async_trait;

use crate::{JobId, Result};

/// Guards exclusivity keys rendered from task arguments.
///
/// A key is held by one owner (a job) at a time. Locks carry a time-to-live so that a holder that
/// vanished (a killed worker) cannot hold a key forever; a live holder renews it.
#[async_trait]
pub trait Locker: Send + Sync + 'static {
    /// Takes `key` for `owner` unless another owner holds it; `true` when taken (or already held
    /// by `owner`).
    async fn try_acquire(&self, key: &str, owner: JobId, ttl: Duration) -> Result<bool>;

    /// Extends `owner`'s hold on `key`; `false` when it no longer holds it.
    async fn renew(&self, key: &str, owner: JobId, ttl: Duration) -> Result<bool>;

    /// Lets go of `key` if `owner` holds it.
    async fn release(&self, key: &str, owner: JobId) -> Result<()>;

    /// The current holder of `key`, if any.
    async fn holder(&self, key: &str) -> Result<Option<JobId>>;
}
