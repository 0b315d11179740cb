//! Task kinds and registration: async, blocking, shell; typed and by-name submission.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tlo::{Error, JobState, LogLevel, ShellCommand, SubmitOptions, TaskOptions};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Greeting {
    name: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_task_returns_typed_result() {
    let tlo = tlo();
    let greet = tlo
        .register(
            "greet",
            TaskOptions::new(),
            |_ctx, g: Greeting| async move { Ok::<_, String>(format!("hello {}", g.name)) },
        )
        .unwrap();
    tlo.start().unwrap();
    let handle = tlo
        .submit(&greet, Greeting { name: "Ada".into() })
        .await
        .unwrap();
    assert_eq!(handle.result().await.unwrap(), "hello Ada");
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_tasks_run_on_a_bounded_pool_off_the_async_workers() {
    let tlo = tlo_with(fast().blocking_threads(2).concurrency(8));
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (c, p) = (current.clone(), peak.clone());
    let work = tlo
        .register_blocking("crunch", TaskOptions::new(), move |_ctx, n: u64| {
            let now = c.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(ms(60));
            c.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, String>(n * 2)
        })
        .unwrap();
    tlo.start().unwrap();
    let mut handles = Vec::new();
    for n in 0..6 {
        handles.push(tlo.submit(&work, n).await.unwrap());
    }
    for (n, handle) in handles.iter().enumerate() {
        assert_eq!(handle.result().await.unwrap(), n as u64 * 2);
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2, "pool bound of 2 threads");
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_tasks_do_not_stall_async_jobs() {
    // Both runtime workers would be stuck if blocking handlers ran on them.
    let tlo = tlo_with(fast().blocking_threads(4).concurrency(8));
    let block = tlo
        .register_blocking("block", TaskOptions::new(), |_ctx, _: ()| {
            std::thread::sleep(ms(400));
            Ok::<_, String>(())
        })
        .unwrap();
    let quick = tlo
        .register("quick", TaskOptions::new(), |_ctx, _: ()| async {
            Ok::<_, String>(())
        })
        .unwrap();
    tlo.start().unwrap();
    let blockers = tlo.submit_batch(&block, vec![(); 3]).await.unwrap();
    eventually("blockers running", || async {
        tlo.handle::<()>(blockers[2]).is_running().await.unwrap()
    })
    .await;
    let started = std::time::Instant::now();
    tlo.submit(&quick, ())
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert!(
        started.elapsed() < ms(200),
        "async job waited {:?}",
        started.elapsed()
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_task_logs_output_and_templates_arguments_safely() {
    let tlo = tlo();
    tlo.register_shell(
        "echo",
        TaskOptions::new(),
        ShellCommand::new("echo hello {name}; echo oops >&2").unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let handle = tlo
        .submit_json(
            "echo",
            json!({"name": "Ada; rm -rf /"}),
            SubmitOptions::new(),
        )
        .await
        .unwrap();
    let job = handle.wait().await.unwrap();
    assert_eq!(job.state, JobState::Done, "{:?}", job.error);
    let logs = handle.logs().await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.level == LogLevel::Info && l.message == "hello Ada; rm -rf /"),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.level == LogLevel::Warning && l.message == "oops")
    );
    tlo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_task_nonzero_exit_fails_naming_the_code() {
    let tlo = tlo();
    tlo.register_shell(
        "fail",
        TaskOptions::new(),
        ShellCommand::new("exit 3").unwrap(),
    )
    .unwrap();
    tlo.start().unwrap();
    let handle = tlo
        .submit_json("fail", json!({}), SubmitOptions::new())
        .await
        .unwrap();
    let job = handle.wait().await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.error.as_deref().unwrap().contains("code 3"),
        "{:?}",
        job.error
    );
    tlo.stop().await.unwrap();
}

#[tokio::test]
async fn duplicate_task_name_is_an_error() {
    let tlo = tlo();
    let noop = |_ctx, _: ()| async { Ok::<_, String>(()) };
    tlo.register("t", TaskOptions::new(), noop).unwrap();
    let err = tlo.register("t", TaskOptions::new(), noop).unwrap_err();
    assert!(
        matches!(err, Error::DuplicateTask(ref name) if name == "t"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_task_is_an_error_at_submit() {
    let tlo = tlo();
    let err = tlo
        .submit_json("nope", json!({}), SubmitOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownTask(ref name) if name == "nope"),
        "{err}"
    );
}

#[tokio::test]
async fn arguments_that_do_not_deserialize_are_refused_at_submit() {
    let tlo = tlo();
    tlo.register(
        "greet",
        TaskOptions::new(),
        |_ctx, g: Greeting| async move { Ok::<_, String>(g.name) },
    )
    .unwrap();
    let err = tlo
        .submit_json("greet", json!({"nom": 1}), SubmitOptions::new())
        .await
        .unwrap_err();
    match err {
        Error::InvalidArguments { task, message } => {
            assert_eq!(task, "greet");
            assert!(message.contains("name"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        tlo.jobs(&Default::default()).await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn shell_template_naming_a_missing_argument_is_refused_at_submit() {
    let tlo = tlo();
    tlo.register_shell(
        "t",
        TaskOptions::new(),
        ShellCommand::new("echo {who}").unwrap(),
    )
    .unwrap();
    let err = tlo
        .submit_json("t", json!({"name": "x"}), SubmitOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingTemplateArgument { ref missing, .. } if missing == "who"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_injected_into_handlers() {
    struct Greeter(&'static str);
    let tlo = build(tlo::Tlo::builder().settings(fast()).service(Greeter("hi")));
    let t = tlo
        .register("t", TaskOptions::new(), |ctx, _: ()| async move {
            let greeter = ctx.service::<Greeter>().ok_or("no greeter")?;
            Ok::<_, String>(greeter.0.to_string())
        })
        .unwrap();
    tlo.start().unwrap();
    assert_eq!(
        tlo.submit(&t, ()).await.unwrap().result().await.unwrap(),
        "hi"
    );
    tlo.stop().await.unwrap();
}
