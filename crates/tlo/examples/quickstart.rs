//! Quick start: register a task, submit a job, wait for its typed result.
//!
//! Run with `cargo run -p tlo --example quickstart`.

use serde::{Deserialize, Serialize};
use tlo::{Backoff, TaskOptions, Tlo};

#[derive(Serialize, Deserialize)]
struct Resize {
    image: String,
    width: u32,
}

/// Runs the example.
#[tokio::main]
pub async fn main() -> Result<(), tlo::Error> {
    let tlo = Tlo::builder().build()?;
    let resize = tlo.register(
        "resize",
        TaskOptions::new()
            .max_attempts(3)
            .backoff(Backoff::exponential(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(5),
            )),
        |ctx, job: Resize| async move {
            ctx.report_progress(50.0, format!("resizing {}", job.image));
            Ok::<_, String>(format!("{}@{}w", job.image, job.width))
        },
    )?;
    tlo.start()?;
    let handle = tlo
        .submit(
            &resize,
            Resize {
                image: "cat.png".into(),
                width: 640,
            },
        )
        .await?;
    let output = handle.result().await?;
    println!("{output}");
    assert_eq!(output, "cat.png@640w");
    tlo.stop().await
}
