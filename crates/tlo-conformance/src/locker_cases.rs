//! Locker cases: each takes a fresh locker and panics with a clear message on failure.

use std::time::Duration;

use tlo_core::{JobId, Locker};

const TTL: Duration = Duration::from_secs(30);

/// One holder at a time; released keys are free.
pub async fn acquire_contend_release<L: Locker>(locker: &L) {
    let (a, b) = (JobId::new(), JobId::new());
    assert!(locker.try_acquire("k", a, TTL).await.unwrap());
    assert!(!locker.try_acquire("k", b, TTL).await.unwrap());
    assert_eq!(locker.holder("k").await.unwrap(), Some(a));
    locker.release("k", b).await.unwrap();
    assert_eq!(
        locker.holder("k").await.unwrap(),
        Some(a),
        "only the holder releases"
    );
    locker.release("k", a).await.unwrap();
    assert_eq!(locker.holder("k").await.unwrap(), None);
    assert!(locker.try_acquire("k", b, TTL).await.unwrap());
    assert!(
        locker.try_acquire("other", a, TTL).await.unwrap(),
        "keys are independent"
    );
}

/// The holder may take its key again.
pub async fn same_owner_reacquires<L: Locker>(locker: &L) {
    let a = JobId::new();
    assert!(locker.try_acquire("k", a, TTL).await.unwrap());
    assert!(locker.try_acquire("k", a, TTL).await.unwrap());
}

/// Only the holder renews.
pub async fn only_the_holder_renews<L: Locker>(locker: &L) {
    let (a, b) = (JobId::new(), JobId::new());
    assert!(locker.try_acquire("k", a, TTL).await.unwrap());
    assert!(locker.renew("k", a, TTL).await.unwrap());
    assert!(!locker.renew("k", b, TTL).await.unwrap());
    assert!(!locker.renew("missing", a, TTL).await.unwrap());
}

/// A lease that ran out lets another owner in.
pub async fn expired_lock_is_taken_over<L: Locker>(locker: &L) {
    let (a, b) = (JobId::new(), JobId::new());
    assert!(
        locker
            .try_acquire("k", a, Duration::from_millis(50))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(locker.holder("k").await.unwrap(), None);
    assert!(locker.try_acquire("k", b, TTL).await.unwrap());
    assert_eq!(locker.holder("k").await.unwrap(), Some(b));
}
