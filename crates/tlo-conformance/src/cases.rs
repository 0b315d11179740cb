//! Store cases: each takes a fresh, empty store and panics with a clear message on failure.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, json};
use tlo_core::transition::Change;
use tlo_core::{
    CancelOutcome, ClaimRequest, Completion, Error, JobFilter, JobId, JobState, LogEntry, LogLevel,
    NewJob, Outcome, Progress, QueueDemand, Store,
};

const WORKER: &str = "worker-1";
const LEASE: Duration = Duration::from_secs(30);

/// A due job of `task` on queue `default`.
fn job(task: &str) -> NewJob {
    let mut new = NewJob::new(task, json!({"n": 1}));
    new.eta = Utc::now() - TimeDelta::seconds(1);
    new
}

fn request(queues: &[(&str, usize)], limit: usize, now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        worker: WORKER.into(),
        queues: queues
            .iter()
            .map(|(queue, limit)| QueueDemand {
                queue: (*queue).into(),
                limit: *limit,
            })
            .collect(),
        limit,
        now,
        lease: LEASE,
    }
}

async fn put<S: Store>(store: &S, jobs: Vec<NewJob>) -> Vec<JobId> {
    store
        .enqueue(jobs)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

async fn claim<S: Store>(store: &S, limit: usize) -> Vec<tlo_core::Job> {
    store
        .claim(&request(&[("default", limit)], limit, Utc::now()))
        .await
        .expect("claim")
}

async fn complete<S: Store>(
    store: &S,
    id: JobId,
    attempt: u32,
    outcome: Outcome,
) -> tlo_core::Result<tlo_core::Job> {
    store
        .complete(Completion {
            id,
            attempt,
            outcome,
            at: Utc::now(),
        })
        .await
}

async fn state<S: Store>(store: &S, id: JobId) -> JobState {
    store.get(id).await.expect("get").expect("job exists").state
}

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

/// Done keeps the result and the end time.
pub async fn done_stores_result<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    let done = complete(&*store, id, 1, Outcome::Done(json!({"ok": true})))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Done);
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!(stored.result, Some(json!({"ok": true})));
    assert!(stored.finished_at.is_some());
    assert_eq!(stored.attempts[0].outcome, Some(JobState::Done));
}

/// A failure with attempts left goes back to `scheduled` at its retry time.
pub async fn failure_with_attempts_left_is_retried<S: Store>(store: Arc<S>) {
    let mut new = job("t");
    new.max_attempts = 2;
    let id = put(&*store, vec![new]).await[0];
    claim(&*store, 1).await;
    let retry_at = Utc::now() + TimeDelta::seconds(60);
    let failed = Outcome::Failed {
        error: "boom".into(),
        retry_at: Some(retry_at),
    };
    let back = complete(&*store, id, 1, failed).await.unwrap();
    assert_eq!(back.state, JobState::Scheduled);
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!(stored.eta.timestamp_micros(), retry_at.timestamp_micros());
    assert_eq!(stored.attempts[0].error.as_deref(), Some("boom"));
    assert!(
        claim(&*store, 1).await.is_empty(),
        "not before its retry time"
    );
    let later = retry_at + TimeDelta::seconds(1);
    let again = store
        .claim(&request(&[("default", 1)], 1, later))
        .await
        .unwrap();
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].attempts.len(), 2);
}

/// The last allowed attempt's failure ends `failed`.
pub async fn failure_without_attempts_left_fails<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    let failed = Outcome::Failed {
        error: "boom".into(),
        retry_at: Some(Utc::now()),
    };
    let ended = complete(&*store, id, 1, failed).await.unwrap();
    assert_eq!(ended.state, JobState::Failed);
    assert_eq!(ended.error.as_deref(), Some("boom"));
}

/// A write for another attempt changes nothing.
pub async fn stale_completion_is_fenced<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    let err = complete(&*store, id, 2, Outcome::Done(json!(null)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::StaleAttempt {
                attempt: 2,
                current: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(state(&*store, id).await, JobState::Running);
}

/// An end state stays.
pub async fn end_states_are_never_overwritten<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    complete(&*store, id, 1, Outcome::Done(json!(1)))
        .await
        .unwrap();
    assert!(complete(&*store, id, 1, Outcome::Cancelled).await.is_err());
    assert!(store.request_cancel(id).await.is_err());
    assert_eq!(state(&*store, id).await, JobState::Done);
}

/// A snooze puts the job back without using the attempt.
pub async fn snooze_returns_the_attempt<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    let eta = Utc::now() + TimeDelta::seconds(5);
    let back = complete(&*store, id, 1, Outcome::Snoozed { eta })
        .await
        .unwrap();
    assert_eq!((back.state, back.attempt), (JobState::Scheduled, 0));
    let stored = store.get(id).await.unwrap().unwrap();
    assert!(stored.attempts.is_empty());
    assert_eq!(stored.eta.timestamp_micros(), eta.timestamp_micros());
}

/// A job not started ends `cancelled` at once and is never claimed.
pub async fn cancel_scheduled_job<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    assert_eq!(
        store.request_cancel(id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(state(&*store, id).await, JobState::Cancelled);
    assert!(claim(&*store, 1).await.is_empty());
}

/// A running job becomes `cancel_requested`; the worker acknowledges with `cancelling`.
pub async fn cancel_running_job_requests_it<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    assert_eq!(
        store.request_cancel(id).await.unwrap(),
        CancelOutcome::Requested
    );
    assert_eq!(state(&*store, id).await, JobState::CancelRequested);
    store.acknowledge_cancel(id, 1).await.unwrap();
    assert_eq!(state(&*store, id).await, JobState::Cancelling);
    complete(&*store, id, 1, Outcome::Cancelled).await.unwrap();
    assert_eq!(state(&*store, id).await, JobState::Cancelled);
}

/// Of several concurrent cancels exactly one succeeds.
pub async fn exactly_one_concurrent_cancel_succeeds<S: Store>(store: Arc<S>) {
    for running in [false, true] {
        let id = put(&*store, vec![job("t")]).await[0];
        if running {
            claim(&*store, 1).await;
        }
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.request_cancel(id).await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(Error::IllegalTransition { .. }) => {}
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(ok, 1, "running={running}");
    }
}

/// Cancelling an ended job is an illegal transition.
pub async fn cancel_of_end_state_is_illegal<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    store.request_cancel(id).await.unwrap();
    let err = store.request_cancel(id).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::IllegalTransition {
                from: JobState::Cancelled,
                ..
            }
        ),
        "{err}"
    );
}

/// A running job of a non-cancellable task refuses cancel.
pub async fn non_cancellable_running_job_refuses_cancel<S: Store>(store: Arc<S>) {
    let mut new = job("t");
    new.cancellable = false;
    let id = put(&*store, vec![new]).await[0];
    claim(&*store, 1).await;
    assert!(matches!(
        store.request_cancel(id).await,
        Err(Error::NotCancellable(_))
    ));
    assert_eq!(state(&*store, id).await, JobState::Running);
}

/// A handler that returns after its cancel was requested ends `cancelled`.
pub async fn done_after_cancel_request_ends_cancelled<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    store.request_cancel(id).await.unwrap();
    let ended = complete(&*store, id, 1, Outcome::Done(json!(1)))
        .await
        .unwrap();
    assert_eq!(ended.state, JobState::Cancelled);
}

/// Lease renewal extends held jobs and reports their states.
pub async fn renew_leases_reports_states<S: Store>(store: Arc<S>) {
    let ids = put(&*store, vec![job("t"), job("t")]).await;
    claim(&*store, 2).await;
    store.request_cancel(ids[1]).await.unwrap();
    let until = Utc::now() + TimeDelta::seconds(300);
    let states = store
        .renew_leases(
            WORKER,
            &[(ids[0], 1), (ids[1], 1), (JobId::new(), 1)],
            until,
        )
        .await
        .unwrap();
    assert_eq!(states.len(), 2);
    assert!(states.contains(&(ids[0], JobState::Running)));
    assert!(states.contains(&(ids[1], JobState::CancelRequested)));
    let lease = store
        .get(ids[0])
        .await
        .unwrap()
        .unwrap()
        .lease_until
        .unwrap();
    assert_eq!(lease.timestamp_micros(), until.timestamp_micros());
    let other = store
        .renew_leases("other", &[(ids[0], 1)], until)
        .await
        .unwrap();
    assert!(other.is_empty(), "another worker's job");
    let stale = store
        .renew_leases(WORKER, &[(ids[0], 9)], until)
        .await
        .unwrap();
    assert!(stale.is_empty(), "another attempt");
}

/// Jobs whose lease ran out are put back (or failed when out of attempts).
pub async fn rescue_expired_leases<S: Store>(store: Arc<S>) {
    let mut retryable = job("t");
    retryable.max_attempts = 2;
    let ids = put(&*store, vec![retryable, job("t"), job("t")]).await;
    let short = ClaimRequest {
        lease: Duration::from_millis(1),
        ..request(&[("default", 2)], 2, Utc::now())
    };
    store.claim(&short).await.unwrap();
    claim(&*store, 1).await; // the third, with a long lease
    let rescued = store
        .rescue_expired(Utc::now() + TimeDelta::seconds(1))
        .await
        .unwrap();
    assert_eq!(rescued.len(), 2);
    assert_eq!(state(&*store, ids[0]).await, JobState::Scheduled);
    assert_eq!(state(&*store, ids[1]).await, JobState::Failed);
    assert_eq!(state(&*store, ids[2]).await, JobState::Running);
}

/// Progress is kept, and refused for another attempt.
pub async fn progress_is_fenced<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    let progress = Progress {
        percent: Some(42.0),
        message: Some("halfway".into()),
    };
    store.set_progress(id, 1, progress.clone()).await.unwrap();
    assert_eq!(store.get(id).await.unwrap().unwrap().progress, progress);
    assert!(matches!(
        store.set_progress(id, 3, Progress::default()).await,
        Err(Error::StaleAttempt { .. })
    ));
}

/// Log lines come back in order; an unknown job is not found.
pub async fn logs_in_order<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    let line = |message: &str| LogEntry {
        at: Utc::now(),
        level: LogLevel::Info,
        message: message.into(),
        attempt: 1,
    };
    store
        .append_logs(id, vec![line("one"), line("two")])
        .await
        .unwrap();
    store.append_logs(id, vec![line("three")]).await.unwrap();
    let messages: Vec<String> = store
        .logs(id)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(messages, ["one", "two", "three"]);
    let unknown = JobId::new();
    assert!(matches!(
        store.logs(unknown).await,
        Err(Error::JobNotFound(_))
    ));
    assert!(matches!(
        store.append_logs(unknown, vec![line("x")]).await,
        Err(Error::JobNotFound(_))
    ));
}

/// Filters AND together; results sort by depth, order, id.
pub async fn list_filters_and_order<S: Store>(store: Arc<S>) {
    let root = job("root");
    let root_id = root.id;
    let mut children = Vec::new();
    for (order, task) in [(2, "child"), (1, "child"), (1, "other")] {
        let mut c = job(task);
        c.parent = Some(root_id);
        c.root = root_id;
        c.depth = 1;
        c.order = order;
        c.queue = "kids".into();
        if task == "other" {
            c.metadata.insert("tag".into(), json!("x"));
        }
        children.push(c);
    }
    let ids = put(&*store, [vec![root], children].concat()).await;
    store.request_cancel(ids[3]).await.unwrap();
    let tree = store
        .list(&JobFilter::default().root(root_id))
        .await
        .unwrap();
    let order: Vec<JobId> = tree.iter().map(|j| j.id).collect();
    assert_eq!(order, vec![ids[0], ids[2], ids[3], ids[1]]);
    let kids = store
        .list(&JobFilter::default().parent(root_id).task("child"))
        .await
        .unwrap();
    assert_eq!(kids.len(), 2);
    let queue = store
        .list(&JobFilter::default().queue("kids"))
        .await
        .unwrap();
    assert_eq!(queue.len(), 3);
    let tagged = store
        .list(&JobFilter::default().metadata("tag", "x"))
        .await
        .unwrap();
    assert_eq!(
        tagged.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[3]]
    );
    let cancelled = JobFilter::default().state(JobState::Cancelled);
    assert_eq!(store.list(&cancelled).await.unwrap().len(), 1);
    let limited = store.list(&JobFilter::default().limit(2)).await.unwrap();
    assert_eq!(limited.len(), 2);
}

/// Due counts and the next eta per queue.
pub async fn count_due_and_next_eta<S: Store>(store: Arc<S>) {
    let now = Utc::now();
    let mut later = job("t");
    later.eta =
        DateTime::from_timestamp_micros((now + TimeDelta::seconds(60)).timestamp_micros()).unwrap();
    let mut elsewhere = job("t");
    elsewhere.queue = "other".into();
    put(&*store, vec![job("t"), job("t"), later.clone(), elsewhere]).await;
    let queues = vec!["default".to_string()];
    assert_eq!(store.count_due(&queues, now).await.unwrap(), 2);
    let all = vec!["default".to_string(), "other".to_string()];
    assert_eq!(store.count_due(&all, now).await.unwrap(), 3);
    let next = store.next_eta(&queues).await.unwrap().expect("an eta");
    assert!(next <= now);
    claim(&*store, 2).await;
    assert_eq!(store.next_eta(&queues).await.unwrap(), Some(later.eta));
    assert_eq!(store.next_eta(&["none".to_string()]).await.unwrap(), None);
    // The earliest eta over every priority level and every queue named.
    let micros = |delta: TimeDelta| {
        DateTime::from_timestamp_micros((now + delta).timestamp_micros()).unwrap()
    };
    let mut urgent_but_late = job("t");
    urgent_but_late.priority = 9;
    urgent_but_late.eta = micros(TimeDelta::seconds(90));
    let mut lowly_but_sooner = job("t");
    lowly_but_sooner.priority = -9;
    lowly_but_sooner.eta = micros(TimeDelta::seconds(30));
    let mut other_queue_soonest = job("t");
    other_queue_soonest.queue = "third".into();
    other_queue_soonest.eta = micros(TimeDelta::seconds(10));
    put(
        &*store,
        vec![
            urgent_but_late,
            lowly_but_sooner.clone(),
            other_queue_soonest.clone(),
        ],
    )
    .await;
    assert_eq!(
        store.next_eta(&queues).await.unwrap(),
        Some(lowly_but_sooner.eta)
    );
    let both = vec!["default".to_string(), "third".to_string()];
    assert_eq!(
        store.next_eta(&both).await.unwrap(),
        Some(other_queue_soonest.eta)
    );
}

/// Stop-with-cancel on an unshared store cancels only scheduled jobs of the named queues.
pub async fn cancel_scheduled_by_queue<S: Store>(store: Arc<S>) {
    let mut elsewhere = job("t");
    elsewhere.queue = "other".into();
    let ids = put(&*store, vec![job("t"), job("t"), elsewhere]).await;
    claim(&*store, 1).await;
    let cancelled = store
        .cancel_scheduled(&["default".to_string()])
        .await
        .unwrap();
    assert_eq!(cancelled, 1);
    assert_eq!(state(&*store, ids[0]).await, JobState::Running);
    assert_eq!(state(&*store, ids[1]).await, JobState::Cancelled);
    assert_eq!(state(&*store, ids[2]).await, JobState::Scheduled);
}

/// A schedule slot is claimed once, by any scheduler.
pub async fn schedule_slots_fire_once<S: Store>(store: Arc<S>) {
    let slot = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    assert_eq!(store.last_schedule_slot("a").await.unwrap(), None);
    assert!(store.claim_schedule_slot("a", slot).await.unwrap());
    assert!(!store.claim_schedule_slot("a", slot).await.unwrap());
    assert!(
        !store
            .claim_schedule_slot("a", slot - TimeDelta::seconds(1))
            .await
            .unwrap()
    );
    assert!(
        store.claim_schedule_slot("b", slot).await.unwrap(),
        "per schedule"
    );
    assert_eq!(store.last_schedule_slot("a").await.unwrap(), Some(slot));
    let next = slot + TimeDelta::seconds(60);
    assert!(store.claim_schedule_slot("a", next).await.unwrap());
    assert_eq!(store.last_schedule_slot("a").await.unwrap(), Some(next));
}

/// An unknown id reads as `None`.
pub async fn unknown_job_is_none<S: Store>(store: Arc<S>) {
    assert!(store.get(JobId::new()).await.unwrap().is_none());
    assert!(matches!(
        store.request_cancel(JobId::new()).await,
        Err(Error::JobNotFound(_))
    ));
}

/// An ended job runs again with one more attempt; an active one cannot be relaunched.
pub async fn relaunch_runs_an_ended_job_again<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    assert!(matches!(
        store.relaunch(id, Utc::now()).await,
        Err(Error::IllegalTransition { .. })
    ));
    claim(&*store, 1).await;
    let failed = Outcome::Failed {
        error: "boom".into(),
        retry_at: None,
    };
    complete(&*store, id, 1, failed).await.unwrap();
    let again = store.relaunch(id, Utc::now()).await.unwrap();
    assert_eq!(
        (again.state, again.error.clone()),
        (JobState::Scheduled, None)
    );
    let claimed = claim(&*store, 1).await;
    assert_eq!((claimed[0].id, claimed[0].attempt), (id, 2));
    assert_eq!(
        claimed[0].attempts[0].error.as_deref(),
        Some("boom"),
        "history kept"
    );
}

/// A process: created `idle` (never claimed), launched to `scheduled`, dismissed back to
/// `idle` once ended with its result and progress cleared; dismissing an active job is illegal.
pub async fn idle_jobs_launch_and_dismiss<S: Store>(store: Arc<S>) {
    let mut new = job("t");
    new.state = JobState::Idle;
    let id = put(&*store, vec![new]).await[0];
    assert!(claim(&*store, 1).await.is_empty(), "idle is never claimed");
    let launched = store.relaunch(id, Utc::now()).await.unwrap();
    assert_eq!(launched.state, JobState::Scheduled);
    assert!(matches!(
        store.change(id, Change::Dismiss).await,
        Err(Error::IllegalTransition { .. })
    ));
    claim(&*store, 1).await;
    store
        .set_progress(
            id,
            1,
            Progress {
                percent: Some(40.0),
                message: Some("m".into()),
            },
        )
        .await
        .unwrap();
    complete(&*store, id, 1, Outcome::Done(json!("r")))
        .await
        .unwrap();
    let idle = store.change(id, Change::Dismiss).await.unwrap();
    assert_eq!((idle.state, idle.result.clone()), (JobState::Idle, None));
    assert_eq!(idle.progress, Progress::default());
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.finished_at), (JobState::Idle, None));
}

/// One info line of attempt 1.
fn log_line() -> LogEntry {
    LogEntry {
        at: Utc::now(),
        level: LogLevel::Info,
        message: "x".into(),
        attempt: 1,
    }
}

/// Delete removes idle and ended jobs with their logs, all or nothing: an active job among
/// them leaves every job in place. `clear_logs` empties one log.
pub async fn delete_only_inactive_jobs_with_their_logs<S: Store>(store: Arc<S>) {
    let mut idle = job("t");
    idle.state = JobState::Idle;
    let ids = put(&*store, vec![idle, job("t"), job("t")]).await;
    claim(&*store, 1).await;
    complete(&*store, ids[1], 1, Outcome::Done(json!(1)))
        .await
        .unwrap();
    let line = log_line();
    store.append_logs(ids[1], vec![line.clone()]).await.unwrap();
    let refused = store.delete(&ids).await.unwrap_err();
    assert!(
        matches!(refused, Error::ActiveJob { job, state: JobState::Scheduled } if job == ids[2]),
        "{refused}"
    );
    assert!(
        store.get(ids[0]).await.unwrap().is_some(),
        "nothing deleted"
    );
    assert_eq!(store.logs(ids[1]).await.unwrap().len(), 1);

    assert_eq!(
        store.delete(&[ids[0], ids[1], JobId::new()]).await.unwrap(),
        2
    );
    assert!(store.get(ids[0]).await.unwrap().is_none());
    assert!(store.get(ids[1]).await.unwrap().is_none());
    assert!(store.get(ids[2]).await.unwrap().is_some());

    store.append_logs(ids[2], vec![line]).await.unwrap();
    store.clear_logs(ids[2]).await.unwrap();
    assert!(store.logs(ids[2]).await.unwrap().is_empty());
    assert!(matches!(
        store.clear_logs(JobId::new()).await,
        Err(Error::JobNotFound(_))
    ));
}

/// Pruning removes old ended jobs of one state with their logs, and never anything active.
pub async fn prune_removes_only_old_ended_jobs<S: Store>(store: Arc<S>) {
    let ids = put(&*store, vec![job("t"), job("t"), job("t")]).await;
    claim(&*store, 1).await;
    complete(&*store, ids[0], 1, Outcome::Done(json!(1)))
        .await
        .unwrap();
    let line = log_line();
    store.append_logs(ids[0], vec![line]).await.unwrap();
    store.request_cancel(ids[1]).await.unwrap();
    let future = Utc::now() + TimeDelta::seconds(1);
    assert!(
        store.prune(JobState::Scheduled, future, 10).await.is_err(),
        "active refused"
    );
    assert_eq!(
        store
            .prune(JobState::Done, Utc::now() - TimeDelta::hours(1), 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.prune(JobState::Done, future, 10).await.unwrap(), 1);
    assert!(store.get(ids[0]).await.unwrap().is_none());
    assert!(store.logs(ids[0]).await.is_err(), "logs went with the job");
    assert_eq!(
        state(&*store, ids[1]).await,
        JobState::Cancelled,
        "other states kept"
    );
    assert_eq!(state(&*store, ids[2]).await, JobState::Scheduled);
    assert_eq!(
        store.prune(JobState::Cancelled, future, 10).await.unwrap(),
        1
    );

    // A process lives until deleted, however long ago it ended.
    let mut process = job("t");
    process.unique_key = Some(format!("{}nightly", tlo_core::PROCESS_KEY_PREFIX));
    let process = put(&*store, vec![process]).await[0];
    claim(&*store, 2).await; // The waiting job above, then the process.
    complete(&*store, process, 1, Outcome::Done(json!(1)))
        .await
        .unwrap();
    let later = Utc::now() + TimeDelta::seconds(1);
    assert_eq!(store.prune(JobState::Done, later, 10).await.unwrap(), 0);
    assert!(store.get(process).await.unwrap().is_some());
}

/// Completions and the next claims in one round: each completion succeeds or fails alone.
pub async fn complete_and_claim_in_one_round<S: Store>(store: Arc<S>) {
    let ids = put(&*store, vec![job("a"), job("b"), job("c"), job("d")]).await;
    claim(&*store, 2).await;
    let completions = vec![
        Completion {
            id: ids[0],
            attempt: 1,
            outcome: Outcome::Done(json!("ok")),
            at: Utc::now(),
        },
        Completion {
            id: ids[1],
            attempt: 5,
            outcome: Outcome::Done(json!("stale")),
            at: Utc::now(),
        },
    ];
    let next = request(&[("default", 2)], 2, Utc::now());
    let (results, claimed) = store
        .complete_and_claim(completions, Some(&next))
        .await
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap().state, JobState::Done);
    assert!(matches!(results[1], Err(Error::StaleAttempt { .. })));
    let claimed: Vec<JobId> = claimed.into_iter().map(|j| j.id).collect();
    assert_eq!(claimed, vec![ids[2], ids[3]]);
    assert_eq!(
        state(&*store, ids[1]).await,
        JobState::Running,
        "the stale write changed nothing"
    );
    let (results, claimed) = store.complete_and_claim(Vec::new(), None).await.unwrap();
    assert!(results.is_empty() && claimed.is_empty());
}

/// A waiting job is released (new arguments, due now) or skipped; a running one is neither.
pub async fn waiting_jobs_are_released_or_skipped<S: Store>(store: Arc<S>) {
    let mut waiting = job("t");
    waiting.eta = Utc::now() + TimeDelta::days(365);
    let mut other = waiting.clone();
    other.id = JobId::new();
    other.root = other.id;
    let ids = put(&*store, vec![waiting, other, job("t")]).await;
    let now = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    let release = Change::Release {
        args: json!({"upstream": {"a": 1}}),
        eta: now,
    };
    let released = store.change(ids[0], release.clone()).await.unwrap();
    assert_eq!((released.state, released.eta), (JobState::Scheduled, now));
    let skip = Change::Skip {
        error: "UPSTREAM_FAILED".into(),
    };
    let skipped = store.change(ids[1], skip.clone()).await.unwrap();
    assert_eq!(skipped.state, JobState::Skipped);
    assert_eq!(skipped.error.as_deref(), Some("UPSTREAM_FAILED"));
    let claimed = claim(&*store, 5).await;
    let released = claimed
        .iter()
        .find(|j| j.id == ids[0])
        .expect("released job is due");
    assert_eq!(released.args, json!({"upstream": {"a": 1}}));
    assert!(
        claimed.iter().all(|j| j.id != ids[1]),
        "skipped jobs never run"
    );
    assert!(matches!(
        store.change(ids[2], skip).await,
        Err(Error::IllegalTransition { .. })
    ));
    assert!(matches!(
        store.change(ids[1], release).await,
        Err(Error::IllegalTransition { .. })
    ));
}
