//! Outcomes and cancels: results, retries, fencing, snoozes, every cancel path.

use super::*;

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
