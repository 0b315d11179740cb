//! Queues, priorities, exclusivity, a blocking task, a shell task and a schedule, side by side;
//! stops with Drain once the submitted work is done.
//!
//! Run with `cargo run -p tlo --example workers`.

use std::time::Duration;

use serde_json::json;
use tlo::{
    JobFilter, JobState, Schedule, SettingsBuilder, ShellCommand, SubmitOptions, TaskOptions, Tlo,
};

/// Runs the example.
#[tokio::main]
pub async fn main() -> Result<(), tlo::Error> {
    let tlo = Tlo::builder()
        .settings(
            SettingsBuilder::default()
                .concurrency(4)
                .queue_concurrency("emails", 1)
                .tick_interval(Duration::from_millis(100)),
        )
        .on_task_failed(|job| eprintln!("job {} failed: {:?}", job.id, job.error))
        .build()?;

    let email = tlo.register(
        "send_email",
        TaskOptions::new().queue("emails").exclusive("{user_id}"),
        |ctx, args: serde_json::Value| async move {
            ctx.log(
                tlo::LogLevel::Info,
                format!("mailing user {}", args["user_id"]),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, String>(())
        },
    )?;
    let checksum =
        tlo.register_blocking("checksum", TaskOptions::new(), |_ctx, data: Vec<u8>| {
            Ok::<_, String>(data.iter().map(|b| u64::from(*b)).sum::<u64>())
        })?;
    tlo.register_shell(
        "disk_usage",
        TaskOptions::new().description("du of a directory"),
        ShellCommand::new("du -s {dir}")?,
    )?;
    tlo.register(
        "tick",
        TaskOptions::new().schedule(Schedule::every(Duration::from_millis(200))?),
        |_ctx, _: serde_json::Value| async { Ok::<_, String>(()) },
    )?;

    tlo.start()?;
    for user in [1, 2, 1, 3] {
        tlo.submit(&email, json!({ "user_id": user })).await?;
    }
    let sum = tlo
        .submit_with(&checksum, vec![1, 2, 3], SubmitOptions::new().priority(10))
        .await?;
    let du = tlo
        .submit_json(
            "disk_usage",
            json!({ "dir": std::env::temp_dir() }),
            SubmitOptions::new(),
        )
        .await?;
    assert_eq!(sum.result().await?, 6);
    du.wait().await?;
    for line in du.logs().await? {
        println!("du: {}", line.message);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    tlo.stop().await?;
    let done = tlo
        .jobs(&JobFilter::default().state(JobState::Done))
        .await?
        .len();
    println!(
        "{done} jobs done; metrics: {:?}",
        tlo.metrics().tasks.keys().collect::<Vec<_>>()
    );
    assert!(
        done >= 7,
        "emails, checksum, du and at least one scheduled tick"
    );
    Ok(())
}
