//! `MemoryLocker`: exclusivity keys held in this process.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tlo_core::{JobId, Locker, Result, async_trait};

/// A [`Locker`] that keeps keys in memory; holds across the tasks of one process only.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use tlo_core::{JobId, Locker};
/// let locker = tlo_memory::MemoryLocker::new();
/// let (a, b) = (JobId::new(), JobId::new());
/// assert!(locker.try_acquire("user-1", a, Duration::from_secs(30)).await?);
/// assert!(!locker.try_acquire("user-1", b, Duration::from_secs(30)).await?);
/// locker.release("user-1", a).await?;
/// assert!(locker.try_acquire("user-1", b, Duration::from_secs(30)).await?);
/// # Ok::<(), tlo_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct MemoryLocker {
    held: Mutex<HashMap<String, (JobId, Instant)>>,
}

impl MemoryLocker {
    /// No keys held.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Locker for MemoryLocker {
    async fn try_acquire(&self, key: &str, owner: JobId, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut held = self.held.lock();
        match held.get(key) {
            Some(&(holder, until)) if holder != owner && until > now => Ok(false),
            _ => {
                held.insert(key.to_owned(), (owner, now + ttl));
                Ok(true)
            }
        }
    }

    async fn renew(&self, key: &str, owner: JobId, ttl: Duration) -> Result<bool> {
        let mut held = self.held.lock();
        match held.get_mut(key) {
            Some((holder, until)) if *holder == owner => {
                *until = Instant::now() + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &str, owner: JobId) -> Result<()> {
        let mut held = self.held.lock();
        if held.get(key).is_some_and(|(holder, _)| *holder == owner) {
            held.remove(key);
        }
        Ok(())
    }

    async fn holder(&self, key: &str) -> Result<Option<JobId>> {
        let now = Instant::now();
        Ok(self
            .held
            .lock()
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(holder, _)| *holder))
    }
}
