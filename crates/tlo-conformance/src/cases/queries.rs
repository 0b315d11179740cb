//! Queries, due counts, queue-wide cancels, schedule slots.

use super::*;

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
