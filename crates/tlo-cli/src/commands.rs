//! Job inspection and control from the command line, against the store a running `tlo run`
//! uses (a second terminal works: the store is the meeting point).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tlo::{Job, JobFilter, JobId, JobState, SubmitOptions, Tlo};

/// How `tlo submit --wait` reports the job's end in its exit code.
pub(crate) fn exit_code(state: JobState) -> u8 {
    match state {
        JobState::Done => 0,
        JobState::Failed => 3,
        JobState::Cancelled => 4,
        JobState::Skipped => 5,
        _ => 1,
    }
}

/// Exit code of a process control the store refused (not-found, not-launchable, ...).
pub(crate) const REFUSED: u8 = 6;

fn parse_id(text: &str) -> anyhow::Result<JobId> {
    text.parse::<JobId>()
        .map_err(|_| anyhow!("`{text}` is not a job id (a UUID)"))
}

fn short_time(at: Option<tlo::DateTime<tlo::Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `tlo submit`: enqueues a job; with `wait`, follows it to its end and returns the exit code.
pub(crate) async fn submit(
    tlo: &Tlo,
    task: &str,
    args: Option<serde_json::Value>,
    default_args: Option<serde_json::Value>,
    queue: Option<String>,
    delay: Option<std::time::Duration>,
    wait: bool,
) -> anyhow::Result<u8> {
    let args = args
        .or(default_args)
        .unwrap_or_else(|| serde_json::json!({}));
    let mut options = SubmitOptions::new();
    if let Some(queue) = queue {
        options = options.queue(queue);
    }
    if let Some(delay) = delay {
        options = options.delay(delay);
    }
    let handle = tlo.submit_json(task, args, options).await?;
    println!("{}", handle.id());
    if !wait {
        return Ok(0);
    }
    let job = follow(tlo, handle.id()).await?;
    match job.state {
        JobState::Done => println!("{}", job.result.map(|r| r.to_string()).unwrap_or_default()),
        state => eprintln!(
            "job {} {state}: {}",
            job.id,
            job.error.as_deref().unwrap_or("-")
        ),
    }
    Ok(exit_code(job.state))
}

/// Polls the job until it ends, drawing a progress bar on a terminal (state lines otherwise).
async fn follow(tlo: &Tlo, id: JobId) -> anyhow::Result<Job> {
    let tty = std::io::stderr().is_terminal();
    let mut last_state = None;
    loop {
        let job = tlo.job(id).await?;
        if tty {
            let percent = job.progress.percent.unwrap_or(0.0);
            let filled = (percent / 5.0).round() as usize;
            eprint!(
                "\r\x1b[2K[{}{}] {:>5.1}% {} {}",
                "#".repeat(filled.min(20)),
                ".".repeat(20 - filled.min(20)),
                percent,
                job.state,
                job.progress.message.as_deref().unwrap_or("")
            );
            let _ = std::io::stderr().flush();
        } else if last_state != Some(job.state) {
            eprintln!("{}", job.state);
        }
        last_state = Some(job.state);
        if job.state.is_end() {
            if tty {
                eprintln!();
            }
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tlo jobs`: one line per job.
pub(crate) async fn jobs(
    tlo: &Tlo,
    state: Option<&str>,
    task: Option<String>,
    limit: usize,
) -> anyhow::Result<()> {
    let mut filter = JobFilter::default().limit(limit);
    if let Some(state) = state {
        filter = filter.state(state.parse()?);
    }
    if let Some(task) = task {
        filter = filter.task(task);
    }
    let mut jobs = tlo
        .jobs(&JobFilter {
            limit: None,
            ..filter.clone()
        })
        .await?;
    // Newest first, for a human.
    jobs.sort_by_key(|job| std::cmp::Reverse(job.id));
    jobs.truncate(limit);
    println!(
        "{:<36}  {:<16}  {:<16}  {:>7}  {:<10}  CREATED",
        "ID", "TASK", "STATE", "ATTEMPT", "QUEUE"
    );
    for job in jobs {
        println!(
            "{:<36}  {:<16}  {:<16}  {:>3}/{:<3}  {:<10}  {}",
            job.id,
            job.task,
            job.state.as_str(),
            job.attempt,
            job.max_attempts,
            job.queue,
            short_time(Some(job.created_at))
        );
    }
    Ok(())
}

/// `tlo show`: a job's state, attempts, result or error, and log.
pub(crate) async fn show(tlo: &Tlo, id: &str) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    let job = tlo.job(id).await?;
    println!("id:        {}", job.id);
    println!("task:      {}", job.task);
    println!("state:     {}", job.state);
    println!("queue:     {} (priority {})", job.queue, job.priority);
    println!("args:      {}", job.args);
    println!("attempt:   {} of {}", job.attempt, job.max_attempts);
    println!("created:   {}", short_time(Some(job.created_at)));
    println!("eta:       {}", short_time(Some(job.eta)));
    println!("finished:  {}", short_time(job.finished_at));
    if let Some(duration) = job.duration() {
        println!("duration:  {:.3}s", duration.as_secs_f64());
    }
    if let Some(percent) = job.progress.percent {
        println!(
            "progress:  {percent:.1}% {}",
            job.progress.message.as_deref().unwrap_or("")
        );
    }
    if let Some(result) = &job.result {
        println!("result:    {result}");
    }
    if let Some(error) = &job.error {
        println!("error:     {error}");
    }
    for attempt in &job.attempts {
        println!(
            "attempt {}: {} on {} from {} to {}{}",
            attempt.attempt,
            attempt.outcome.map_or("running", |s| s.as_str()),
            attempt.worker,
            short_time(Some(attempt.started_at)),
            short_time(attempt.finished_at),
            attempt
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    let logs = tlo.logs(id).await?;
    if !logs.is_empty() {
        println!("log:");
        for line in logs {
            println!(
                "  {} {:<7} {}",
                line.at.format("%H:%M:%S%.3f"),
                line.level.as_str(),
                line.message
            );
        }
    }
    Ok(())
}

/// `tlo cancel`.
pub(crate) async fn cancel(tlo: &Tlo, id: &str) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    match tlo.cancel(id).await? {
        tlo::CancelOutcome::Cancelled => println!("{id} cancelled"),
        tlo::CancelOutcome::Requested => println!("{id} cancel requested; its worker stops it"),
    }
    Ok(())
}

/// `tlo retry`.
pub(crate) async fn retry(tlo: &Tlo, id: &str) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    let job = tlo.retry(id).await?;
    println!(
        "{} scheduled again (attempt {} of {})",
        job.id,
        job.attempt + 1,
        job.max_attempts
    );
    Ok(())
}

/// `tlo workflow run`: starts a run; with `wait`, prints each node's state changes as they
/// happen, then the report, and returns the exit code of the run's end.
pub(crate) async fn workflow_run(
    tlo: &Tlo,
    name: &str,
    input: Option<&str>,
    parallelism: Option<usize>,
    wait: bool,
) -> anyhow::Result<u8> {
    let input = match input {
        Some(text) => {
            serde_json::from_str(text).with_context(|| format!("--input is not JSON: {text}"))?
        }
        None => serde_json::json!({}),
    };
    let run = tlo
        .run_workflow_with(name, input, tlo::RunOptions { parallelism })
        .await?;
    println!("{}", run.id());
    if !wait {
        return Ok(0);
    }
    let mut seen: std::collections::HashMap<String, JobState> = Default::default();
    loop {
        let report = run.report().await?;
        for node in &report.nodes {
            if seen.get(&node.name) != Some(&node.state) {
                seen.insert(node.name.clone(), node.state);
                eprintln!("{:<20} {}", node.name, node.state);
            }
        }
        if report.state.is_end() {
            print_report(&report);
            return Ok(exit_code(report.state));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_report(report: &tlo::WorkflowReport) {
    println!(
        "workflow {} run {}: {} in {}",
        report.workflow,
        report.run,
        report.state,
        report.duration_s.map_or("-".into(), |d| format!("{d:.3}s"))
    );
    if let Some(error) = &report.error {
        println!("error: {error}");
    }
    println!(
        "{:<20} {:<10} {:>7} {:>9}  RESULT / ERROR",
        "NODE", "STATE", "ATTEMPT", "SECONDS"
    );
    for node in &report.nodes {
        let outcome = match (&node.result, &node.error) {
            (_, Some(error)) => error.clone(),
            (Some(result), None) => result.to_string(),
            (None, None) => String::new(),
        };
        println!(
            "{:<20} {:<10} {:>7} {:>9}  {outcome}",
            node.name,
            node.state.as_str(),
            node.attempts,
            node.duration_s.map_or("-".into(), |d| format!("{d:.3}"))
        );
    }
}

/// `tlo workflow report`.
pub(crate) async fn workflow_report(tlo: &Tlo, id: &str) -> anyhow::Result<()> {
    let report = tlo.workflow_run(parse_id(id)?).report().await?;
    print_report(&report);
    Ok(())
}

/// `tlo launch`: launches a process; with `wait`, follows it and returns the exit code.
pub(crate) async fn launch(tlo: &Tlo, id: &str, wait: bool) -> anyhow::Result<u8> {
    let job = match tlo.launch(id).await {
        Ok(job) => job,
        Err(tlo::ControlError::Store(err)) => return Err(err.into()),
        Err(refused) => {
            eprintln!("tlo: {refused}");
            return Ok(REFUSED);
        }
    };
    println!("{}", job.id);
    if !wait {
        return Ok(0);
    }
    let job = follow(tlo, job.id).await?;
    if job.state != JobState::Done {
        eprintln!(
            "process {id} {}: {}",
            job.state,
            job.error.as_deref().unwrap_or("-")
        );
    }
    Ok(exit_code(job.state))
}

/// `tlo dismiss`: puts an ended process back to idle.
pub(crate) async fn dismiss(tlo: &Tlo, id: &str) -> anyhow::Result<u8> {
    match tlo.dismiss(id).await {
        Ok(job) => {
            println!("{id} {}", job.state);
            Ok(0)
        }
        Err(tlo::ControlError::Store(err)) => Err(err.into()),
        Err(refused) => {
            eprintln!("tlo: {refused}");
            Ok(REFUSED)
        }
    }
}

/// `--match KEY=VALUE` options as a metadata filter; VALUE is JSON when it parses, else text.
pub(crate) fn metadata_filter(
    matches: &[String],
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut filter = serde_json::Map::new();
    for item in matches {
        let (key, value) = item
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| anyhow!("--match `{item}`: expected KEY=VALUE"))?;
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        filter.insert(key.to_owned(), value);
    }
    Ok(filter)
}

/// `tlo block`: a persistent launch block; prints its id.
pub(crate) async fn block(
    tlo: &Tlo,
    filter: serde_json::Map<String, serde_json::Value>,
    reason: &str,
) -> anyhow::Result<()> {
    let block = tlo.block_launches_persistent(filter, reason).await?;
    println!("{}", block.id);
    Ok(())
}

/// `tlo unblock`: lifts a launch block; an unknown id is an error.
pub(crate) async fn unblock(tlo: &Tlo, id: &str) -> anyhow::Result<()> {
    if !tlo.unblock_launches(parse_id(id)?).await? {
        bail!("no launch block `{id}`");
    }
    println!("{id} lifted");
    Ok(())
}

/// `tlo blocks`: the persistent launch blocks, one per line: id, filter, reason.
pub(crate) async fn blocks(tlo: &Tlo) -> anyhow::Result<()> {
    for block in tlo.launch_blocks_in_force().await? {
        let filter = serde_json::Value::Object(block.filter);
        println!("{}	{filter}	{}", block.id, block.reason);
    }
    Ok(())
}

/// `tlo tree`: the job (a process id or a job id) and its descendants, indented by depth.
pub(crate) async fn tree(tlo: &Tlo, id: &str) -> anyhow::Result<()> {
    let root = match tlo.process(id).await? {
        Some(job) => job,
        None => {
            let job_id = parse_id(id).map_err(|_| anyhow!("no process or job `{id}`"))?;
            tlo.job(job_id).await?
        }
    };
    let base = root.depth;
    for job in tlo.tree(root.id).await? {
        let indent = "  ".repeat((job.depth - base) as usize);
        // Children and plain jobs have no process descriptor: their task names them.
        let label = job
            .metadata
            .get(tlo::PROCESS_METADATA_KEY)
            .and_then(|process| process.get("name"))
            .and_then(|name| name.as_str())
            .unwrap_or(&job.task);
        let progress = match (job.progress.percent, job.progress.message.as_deref()) {
            (Some(p), Some(m)) => format!(" {p:.0}% {m}"),
            (Some(p), None) => format!(" {p:.0}%"),
            (None, Some(m)) => format!(" {m}"),
            (None, None) => String::new(),
        };
        println!("{indent}{label}\t{}\t{}{progress}", job.state, job.id);
    }
    Ok(())
}
