//! Submitting and claiming: round trips, order, limits, leases.

use super::*;

/// Every field of a submission survives the store.
pub async fn enqueue_and_get_round_trip<S: Store>(store: Arc<S>) {
    let mut new = job("t");
    new.queue = "q1".into();
    new.priority = 7;
    new.max_attempts = 4;
    new.eta = DateTime::from_timestamp_micros(Utc::now().timestamp_micros() + 5_000_000).unwrap();
    new.metadata = Map::from_iter([("tenant".to_string(), json!("acme"))]);
    new.unique_key = Some("u1".into());
    new.lock_key = Some("user-1".into());
    new.cancellable = false;
    let parent = JobId::new();
    new.parent = Some(parent);
    new.root = parent;
    new.depth = 2;
    new.order = 3;
    let id = put(&*store, vec![new.clone()]).await[0];
    let got = store.get(id).await.unwrap().expect("stored");
    assert_eq!(got.id, new.id);
    assert_eq!((got.task.as_str(), got.queue.as_str()), ("t", "q1"));
    assert_eq!(got.args, json!({"n": 1}));
    assert_eq!((got.priority, got.max_attempts, got.attempt), (7, 4, 0));
    assert_eq!(got.eta, new.eta);
    assert_eq!(got.metadata, new.metadata);
    assert_eq!(got.unique_key.as_deref(), Some("u1"));
    assert_eq!(got.lock_key.as_deref(), Some("user-1"));
    assert!(!got.cancellable);
    assert_eq!(
        (got.parent, got.root, got.depth, got.order),
        (Some(parent), parent, 2, 3)
    );
    assert_eq!(got.state, JobState::Scheduled);
}

/// A batch comes back in submission order.
pub async fn batch_enqueue_keeps_order<S: Store>(store: Arc<S>) {
    let jobs: Vec<NewJob> = (0..20).map(|_| job("t")).collect();
    let expected: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(put(&*store, jobs).await, expected);
}

/// A taken unique key returns the existing job.
pub async fn unique_key_returns_existing_job<S: Store>(store: Arc<S>) {
    let mut first = job("t");
    first.unique_key = Some("k".into());
    let mut second = job("t");
    second.unique_key = Some("k".into());
    let mut other = job("t");
    other.unique_key = Some("k2".into());
    let out = store
        .enqueue(vec![first.clone(), second, other.clone()])
        .await
        .unwrap();
    assert_eq!((out[0].id, out[0].inserted), (first.id, true));
    assert_eq!((out[1].id, out[1].inserted), (first.id, false));
    assert_eq!((out[2].id, out[2].inserted), (other.id, true));
    assert_eq!(store.list(&JobFilter::default()).await.unwrap().len(), 2);
}

/// Highest priority first, then earliest eta, then submission order.
pub async fn claim_order_priority_then_eta_then_submission<S: Store>(store: Arc<S>) {
    let base = Utc::now() - TimeDelta::seconds(60);
    let mut a = job("a");
    a.eta = base + TimeDelta::seconds(2);
    let mut b = job("b");
    b.eta = base + TimeDelta::seconds(2);
    let mut c = job("c");
    c.eta = base + TimeDelta::seconds(1);
    let mut d = job("d");
    d.eta = base + TimeDelta::seconds(3);
    d.priority = 10;
    put(&*store, vec![a, b, c, d]).await;
    let order: Vec<String> = claim(&*store, 10)
        .await
        .into_iter()
        .map(|j| j.task)
        .collect();
    assert_eq!(order, ["d", "c", "a", "b"]);
}

/// Claims take due jobs across priority levels in order, past any number of jobs waiting for a
/// later eta at every level, and take the rest in a later claim.
pub async fn claims_pass_over_waiting_jobs_at_every_priority<S: Store>(store: Arc<S>) {
    let now = Utc::now();
    let mut jobs = Vec::new();
    for (task, priority, due) in [
        ("low-waiting", -3, false),
        ("high-waiting", 5, false),
        ("mid-1", 0, true),
        ("high", 5, true),
        ("low", -3, true),
        ("mid-waiting", 0, false),
        ("mid-2", 0, true),
    ] {
        let mut j = job(task);
        j.priority = priority;
        j.eta = if due {
            now - TimeDelta::seconds(1)
        } else {
            now + TimeDelta::hours(1)
        };
        jobs.push(j);
    }
    put(&*store, jobs).await;
    let tasks = |jobs: Vec<tlo_core::Job>| jobs.into_iter().map(|j| j.task).collect::<Vec<_>>();
    assert_eq!(tasks(claim(&*store, 3).await), ["high", "mid-1", "mid-2"]);
    assert_eq!(tasks(claim(&*store, 10).await), ["low"]);
    assert!(claim(&*store, 10).await.is_empty(), "the waiting ones wait");
}

/// A job is not claimed before its eta, and is once it is due.
pub async fn future_jobs_wait_for_their_eta<S: Store>(store: Arc<S>) {
    let mut later = job("t");
    later.eta = Utc::now() + TimeDelta::seconds(60);
    put(&*store, vec![later]).await;
    assert!(claim(&*store, 10).await.is_empty());
    let future = Utc::now() + TimeDelta::seconds(61);
    let claimed = store
        .claim(&request(&[("default", 10)], 10, future))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
}

/// Total limit, per-queue limits and only the named queues.
pub async fn claim_respects_limits_and_named_queues<S: Store>(store: Arc<S>) {
    let mut jobs = Vec::new();
    for queue in ["a", "a", "a", "b", "b", "c"] {
        let mut j = job("t");
        j.queue = queue.into();
        jobs.push(j);
    }
    put(&*store, jobs).await;
    let claimed = store
        .claim(&request(&[("a", 1), ("b", 5)], 10, Utc::now()))
        .await
        .unwrap();
    let queues: Vec<&str> = claimed.iter().map(|j| j.queue.as_str()).collect();
    assert_eq!(
        queues.iter().filter(|q| **q == "a").count(),
        1,
        "{queues:?}"
    );
    assert_eq!(
        queues.iter().filter(|q| **q == "b").count(),
        2,
        "{queues:?}"
    );
    assert!(!queues.contains(&"c"));
    let claimed = store
        .claim(&request(&[("a", 5), ("c", 5)], 1, Utc::now()))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "total limit");
}

/// A claim starts attempt 1 for the worker with a lease.
pub async fn claim_starts_an_attempt_with_a_lease<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    let now = Utc::now();
    let claimed = store
        .claim(&request(&[("default", 1)], 1, now))
        .await
        .unwrap();
    let j = &claimed[0];
    assert_eq!((j.id, j.state, j.attempt), (id, JobState::Running, 1));
    assert_eq!(j.worker.as_deref(), Some(WORKER));
    let lease = j.lease_until.expect("lease") - now;
    assert!(
        (lease - TimeDelta::seconds(30)).abs() < TimeDelta::milliseconds(1),
        "{lease}"
    );
    assert_eq!(j.attempts.len(), 1);
    assert_eq!(j.attempts[0].worker, WORKER);
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        JobState::Running
    );
}
