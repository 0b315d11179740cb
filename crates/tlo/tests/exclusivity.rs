//! Exclusivity: a key rendered from the arguments admits one job at a time.

mod common;

use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use serde_json::json;
use tlo::{Error, JobState, SubmitOptions, TaskOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_runs_one_after_another_and_other_keys_in_parallel() {
    let tlo = tlo_with(fast().concurrency(4).tick_interval(ms(30)));
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let t = tlo
        .register(
            "digest",
            TaskOptions::new().exclusive("{user_id}"),
            move |_ctx, args: serde_json::Value| {
                let l = l.clone();
                async move {
                    let user = args["user_id"].as_str().unwrap_or_default().to_owned();
                    l.lock().push(format!("start {user}"));
                    tokio::time::sleep(ms(100)).await;
                    l.lock().push(format!("end {user}"));
                    if args["fail"] == json!(true) {
                        return Err("failed on purpose".to_string());
                    }
                    Ok(())
                }
            },
        )
        .unwrap();
    tlo.start().unwrap();
    // The first holder fails: the key must still be released.
    let first = tlo
        .submit(&t, json!({"user_id": "123", "fail": true}))
        .await
        .unwrap();
    tokio::time::sleep(ms(20)).await;
    let second = tlo.submit(&t, json!({"user_id": "123"})).await.unwrap();
    let other = tlo.submit(&t, json!({"user_id": "456"})).await.unwrap();

    // While the key is held the second job is put back: same job, still scheduled.
    eventually("second put back", || async {
        let job = second.job().await.unwrap();
        job.state == JobState::Scheduled && tlo.metrics().tasks["digest"].snoozed > 0
    })
    .await;
    assert_eq!(first.wait().await.unwrap().state, JobState::Failed);
    assert_eq!(second.wait().await.unwrap().state, JobState::Done);
    assert_eq!(other.wait().await.unwrap().state, JobState::Done);
    let log = log.lock().clone();
    let pos = |s: &str| log.iter().position(|x| x == s).unwrap();
    let starts_123: Vec<_> = log
        .iter()
        .enumerate()
        .filter(|(_, x)| *x == "start 123")
        .collect();
    assert_eq!(starts_123.len(), 2);
    assert!(
        starts_123[1].0 > pos("end 123"),
        "second waited for the first: {log:?}"
    );
    assert!(
        pos("start 456") < starts_123[1].0,
        "other key did not wait: {log:?}"
    );
    assert_eq!(
        second.job().await.unwrap().attempt,
        1,
        "put back without using an attempt"
    );
    tlo.stop().await.unwrap();
}

#[tokio::test]
async fn template_naming_a_missing_argument_is_an_error_at_submit() {
    let tlo = tlo();
    tlo.register(
        "digest",
        TaskOptions::new().exclusive("{user_id}"),
        |_ctx, _: serde_json::Value| async { Ok::<_, String>(()) },
    )
    .unwrap();
    let err = tlo
        .submit_json("digest", json!({"user": 1}), SubmitOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingTemplateArgument { ref missing, ref task, .. } if missing == "user_id" && task == "digest"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_template_is_an_error_at_registration() {
    let tlo = tlo();
    let err = tlo
        .register(
            "t",
            TaskOptions::new().exclusive("{user_id"),
            |_ctx, _: ()| async { Ok::<_, String>(()) },
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTemplate { .. }), "{err}");
}
