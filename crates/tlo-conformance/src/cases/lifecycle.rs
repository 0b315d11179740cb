//! Beyond one attempt: relaunch, idle jobs, deletion, pruning, batched rounds, waiting jobs.

use super::*;

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

/// Pruning removes old ended jobs of one state with their logs, in every end state (done,
/// failed, cancelled, skipped); any other state is refused (`InvalidSetting`): nothing active
/// (nor idle) is ever pruned.
pub async fn prune_removes_only_old_ended_jobs<S: Store>(store: Arc<S>) {
    let ids = put(&*store, (0..5).map(|_| job("t")).collect()).await;
    claim(&*store, 1).await;
    complete(&*store, ids[0], 1, Outcome::Done(json!(1)))
        .await
        .unwrap();
    let line = log_line();
    store.append_logs(ids[0], vec![line]).await.unwrap();
    store.request_cancel(ids[1]).await.unwrap();
    let skip = Change::Skip {
        error: "UPSTREAM_FAILED".into(),
    };
    store.change(ids[2], skip).await.unwrap();
    let claimed = claim(&*store, 1).await;
    assert_eq!(claimed[0].id, ids[3]);
    let failed = Outcome::Failed {
        error: "boom".into(),
        retry_at: None,
    };
    complete(&*store, ids[3], 1, failed).await.unwrap();
    let ended = [
        (ids[0], JobState::Done),
        (ids[1], JobState::Cancelled),
        (ids[2], JobState::Skipped),
        (ids[3], JobState::Failed),
    ];
    for (id, end) in ended {
        assert_eq!(state(&*store, id).await, end);
    }
    assert_eq!(state(&*store, ids[4]).await, JobState::Scheduled);

    let future = Utc::now() + TimeDelta::seconds(1);
    for refused in JobState::ALL.into_iter().filter(|s| !s.is_end()) {
        assert!(
            matches!(
                store.prune(refused, future, 10).await,
                Err(Error::InvalidSetting { .. })
            ),
            "pruning {refused} refused"
        );
    }
    for (_, end) in ended {
        assert_eq!(
            store
                .prune(end, Utc::now() - TimeDelta::hours(1), 10)
                .await
                .unwrap(),
            0,
            "{end}: too recent"
        );
    }
    for (i, (id, end)) in ended.into_iter().enumerate() {
        assert_eq!(store.prune(end, future, 10).await.unwrap(), 1, "{end}");
        assert!(store.get(id).await.unwrap().is_none(), "{end} pruned");
        for (other, other_state) in &ended[i + 1..] {
            assert_eq!(
                state(&*store, *other).await,
                *other_state,
                "other states kept"
            );
        }
        assert_eq!(store.prune(end, future, 10).await.unwrap(), 0, "{end}");
    }
    assert!(store.logs(ids[0]).await.is_err(), "logs went with the job");
    assert_eq!(state(&*store, ids[4]).await, JobState::Scheduled);

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

/// An ended job of a tree (a workflow node, a child) is kept, however old, while its root is
/// active (scheduled or executing): the run may still read it. Once the root has ended (and
/// is old enough itself) both go; a job whose root is gone is pruned by its own age.
pub async fn prune_keeps_ended_nodes_of_active_trees<S: Store>(store: Arc<S>) {
    let other = job("other");
    let mut root = job("root");
    root.eta = Utc::now() + TimeDelta::hours(1); // Waits: scheduled, not claimed yet.
    let mut child = job("child");
    child.parent = Some(root.id);
    child.root = root.id;
    child.depth = 1;
    let mut orphan = job("orphan");
    let gone = JobId::new();
    orphan.parent = Some(gone);
    orphan.root = gone;
    orphan.depth = 1;
    let ids = put(&*store, vec![other, child, orphan, root]).await;
    let (other, child, orphan, root) = (ids[0], ids[1], ids[2], ids[3]);
    let claimed: Vec<JobId> = claim(&*store, 5).await.iter().map(|j| j.id).collect();
    assert_eq!(claimed, vec![other, child, orphan], "the root waits");
    for id in [other, child, orphan] {
        complete(&*store, id, 1, Outcome::Done(json!(1)))
            .await
            .unwrap();
    }
    store.append_logs(child, vec![log_line()]).await.unwrap();

    // Root scheduled: the unrelated job and the orphan go, the child stays.
    let future = Utc::now() + TimeDelta::seconds(1);
    assert_eq!(store.prune(JobState::Done, future, 10).await.unwrap(), 2);
    assert!(store.get(other).await.unwrap().is_none());
    assert!(store.get(orphan).await.unwrap().is_none());
    assert_eq!(
        state(&*store, child).await,
        JobState::Done,
        "root scheduled"
    );
    assert_eq!(store.logs(child).await.unwrap().len(), 1);

    // Root running: still kept.
    let release = Change::Release {
        args: json!({"n": 1}),
        eta: Utc::now() - TimeDelta::seconds(1),
    };
    store.change(root, release).await.unwrap();
    let claimed = claim(&*store, 1).await;
    assert_eq!(claimed[0].id, root);
    let future = Utc::now() + TimeDelta::hours(1);
    assert_eq!(store.prune(JobState::Done, future, 10).await.unwrap(), 0);
    assert_eq!(state(&*store, child).await, JobState::Done, "root running");

    // Root ended, not before the cutoff: it stays, and the child, older, goes.
    let ended = complete(&*store, root, 1, Outcome::Done(json!(1)))
        .await
        .unwrap();
    let cutoff = ended.finished_at.expect("finished");
    assert_eq!(store.prune(JobState::Done, cutoff, 10).await.unwrap(), 1);
    assert!(store.get(child).await.unwrap().is_none(), "root ended");
    assert!(store.logs(child).await.is_err(), "logs went with the child");
    assert_eq!(state(&*store, root).await, JobState::Done);

    // Root past retention: it goes too.
    let later = Utc::now() + TimeDelta::seconds(1);
    assert_eq!(store.prune(JobState::Done, later, 10).await.unwrap(), 1);
    assert!(store.get(root).await.unwrap().is_none());
}

/// Several completions in one round: each succeeds or fails alone.
pub async fn completions_in_one_round_succeed_or_fail_alone<S: Store>(store: Arc<S>) {
    let ids = put(&*store, vec![job("a"), job("b"), job("c")]).await;
    claim(&*store, 3).await;
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
        Completion {
            id: ids[2],
            attempt: 1,
            outcome: Outcome::Failed {
                error: "boom".into(),
                retry_at: None,
            },
            at: Utc::now(),
        },
    ];
    let results = store.complete_many(completions).await.unwrap();
    assert_eq!(results[0].as_ref().unwrap().state, JobState::Done);
    assert!(matches!(results[1], Err(Error::StaleAttempt { .. })));
    assert_eq!(results[2].as_ref().unwrap().state, JobState::Failed);
    assert_eq!(
        state(&*store, ids[1]).await,
        JobState::Running,
        "the stale write changed nothing"
    );
    assert_eq!(state(&*store, ids[2]).await, JobState::Failed);
    assert!(store.complete_many(Vec::new()).await.unwrap().is_empty());
}

/// An enqueue followed by a claim that sees the new jobs and takes the best due ones first.
pub async fn enqueue_and_claim_sees_the_new_jobs<S: Store>(store: Arc<S>) {
    let older = put(&*store, vec![job("a")]).await;
    let mut urgent = job("b");
    urgent.priority = 5;
    let (enqueued, claimed) = store
        .enqueue_and_claim(
            vec![job("c"), urgent],
            &request(&[("default", 2)], 2, Utc::now()),
        )
        .await
        .unwrap();
    assert!(enqueued.iter().all(|e| e.inserted));
    let claimed: Vec<JobId> = claimed.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(
        claimed,
        vec![enqueued[1].id, older[0]],
        "the best due jobs, the new urgent one first"
    );
    assert_eq!(state(&*store, enqueued[0].id).await, JobState::Scheduled);
    assert_eq!(state(&*store, enqueued[1].id).await, JobState::Running);
    let mut again = job("c");
    again.unique_key = Some("once".into());
    let first = store.enqueue(vec![again.clone()]).await.unwrap();
    let (enqueued, claimed) = store
        .enqueue_and_claim(vec![again], &request(&[("default", 5)], 5, Utc::now()))
        .await
        .unwrap();
    assert_eq!((enqueued[0].id, enqueued[0].inserted), (first[0].id, false));
    assert_eq!(
        claimed.unwrap().len(),
        2,
        "the two left: c and the unique one"
    );
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

/// Several waiting jobs changed in one round: one result per change, in order; a refused one
/// (an unknown job, a job not waiting) leaves its job as it was and the others apply.
pub async fn waiting_jobs_are_changed_together<S: Store>(store: Arc<S>) {
    let mut waiting = job("t");
    waiting.eta = Utc::now() + TimeDelta::days(365);
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let mut copy = waiting.clone();
        copy.id = JobId::new();
        copy.root = copy.id;
        jobs.push(copy);
    }
    let ids = put(&*store, jobs).await;
    let now = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    let release = |n: i64| Change::Release {
        args: json!({ "n": n }),
        eta: now,
    };
    let skip = Change::Skip {
        error: "UPSTREAM_FAILED".into(),
    };
    store.change(ids[2], skip.clone()).await.unwrap();
    let unknown = JobId::new();
    let results = store
        .change_many(vec![
            (ids[0], release(0)),
            (unknown, release(9)),
            (ids[1], skip),
            (ids[2], release(2)),
        ])
        .await
        .expect("the round itself succeeds");
    assert_eq!(results.len(), 4);
    let released = results[0].as_ref().expect("released");
    assert_eq!((released.state, released.eta), (JobState::Scheduled, now));
    assert!(matches!(results[1], Err(Error::JobNotFound(id)) if id == unknown));
    assert_eq!(
        results[2].as_ref().expect("skipped").state,
        JobState::Skipped
    );
    assert!(matches!(results[3], Err(Error::IllegalTransition { .. })));
    assert_eq!(
        state(&*store, ids[2]).await,
        JobState::Skipped,
        "left as it was"
    );
    let claimed = claim(&*store, 5).await;
    assert_eq!(claimed.len(), 1, "only the released job is due");
    assert_eq!(claimed[0].args, json!({ "n": 0 }));
    assert!(store.change_many(Vec::new()).await.unwrap().is_empty());
}
