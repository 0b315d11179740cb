//! While a job runs: leases, rescue, progress, logs.

use super::*;

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

/// A completion after lease renewals ends the job as stored, lease and worker cleared.
pub async fn completion_after_lease_renewals<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    for seconds in [30, 60] {
        let until = Utc::now() + TimeDelta::seconds(seconds);
        let held = store.renew_leases(WORKER, &[(id, 1)], until).await.unwrap();
        assert_eq!(held, [(id, JobState::Running)]);
    }
    let done = complete(&*store, id, 1, Outcome::Done(json!(7)))
        .await
        .unwrap();
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!(stored, done);
    assert_eq!(
        (stored.state, stored.result),
        (JobState::Done, Some(json!(7)))
    );
    assert_eq!((stored.worker, stored.lease_until), (None, None));
}

/// A claimed job reads back exactly as the claim returned it, by id, by filter, and from
/// a claim over several queues (stores may keep a claim apart from the job's document).
pub async fn claimed_jobs_read_back_as_claimed<S: Store>(store: Arc<S>) {
    put(&*store, vec![job("t"), job("t")]).await;
    let mut other = job("t");
    other.queue = "other".into();
    put(&*store, vec![other]).await;
    let mut claimed = claim(&*store, 1).await;
    let both = request(&[("default", 5), ("other", 5)], 5, Utc::now());
    claimed.extend(store.claim(&both).await.unwrap());
    assert_eq!(claimed.len(), 3);
    for job in &claimed {
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.attempts.len(), 1);
        assert_eq!(store.get(job.id).await.unwrap().as_ref(), Some(job));
    }
    let filter = JobFilter {
        states: vec![JobState::Running],
        ..JobFilter::default()
    };
    let mut listed = store.list(&filter).await.unwrap();
    listed.sort_by_key(|job| job.id);
    claimed.sort_by_key(|job| job.id);
    assert_eq!(listed, claimed);
}

/// A completion keeps what was written after the claim (progress, a renewed lease): stores that
/// prepare completions from their own claims must notice the job changed since.
pub async fn completion_keeps_writes_made_after_the_claim<S: Store>(store: Arc<S>) {
    let id = put(&*store, vec![job("t")]).await[0];
    claim(&*store, 1).await;
    let progress = Progress {
        percent: Some(90.0),
        message: Some("nearly".into()),
    };
    store.set_progress(id, 1, progress.clone()).await.unwrap();
    let done = complete(&*store, id, 1, Outcome::Done(json!("ok")))
        .await
        .unwrap();
    // Done completes a reported percentage; the message stays.
    let ended = Progress {
        percent: Some(100.0),
        ..progress
    };
    assert_eq!(done.progress, ended);
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.progress), (JobState::Done, ended));
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
