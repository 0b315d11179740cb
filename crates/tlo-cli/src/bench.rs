//! `tlo bench`: throughput and latency measurements, one JSON line per measurement.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tlo::{SettingsBuilder, TaskOptions, Tlo};
use tokio::sync::Notify;

/// Which store to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BenchStore {
    /// The in-memory store.
    Memory,
    /// An SQLite file (a fresh temporary one).
    Sqlite,
    /// A PostgreSQL database (`--database-url`), in a fresh schema dropped afterwards.
    Postgres,
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Workload {
    /// Insert N no-op jobs, then time workers draining them.
    Drain,
    /// 200 single jobs 20 ms apart: time from submit to handler start.
    Latency,
    /// One run of an N-node layered DAG of no-op tasks (each node after up to 3 nodes of the
    /// previous layer): overhead per node.
    Dag,
    /// One parent job running a parallel group of N no-op children, all at once: the time from
    /// submitting the parent to its end (`group_ms`).
    Group,
}

/// One measurement, printed as a JSON line.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Measurement {
    system: &'static str,
    version: &'static str,
    backend: &'static str,
    workload: &'static str,
    n: usize,
    concurrency: usize,
    cores: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    jobs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insert_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_node_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p95_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_ms: Option<f64>,
}

fn base(store: BenchStore, workload: &'static str, n: usize, concurrency: usize) -> Measurement {
    Measurement {
        system: "tlo",
        version: env!("CARGO_PKG_VERSION"),
        backend: match store {
            BenchStore::Memory => "memory",
            BenchStore::Sqlite => "sqlite",
            BenchStore::Postgres => "postgres",
        },
        workload,
        n,
        concurrency,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Measurement::default()
    }
}

/// Where a benchmark runs.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The store kind.
    pub(crate) store: BenchStore,
    /// The PostgreSQL server.
    pub(crate) database_url: String,
}

/// What a benchmark leaves behind: its SQLite file or PostgreSQL schema, removed by
/// [`Scratch::remove`] once the orchestrator has stopped.
enum Scratch {
    Nothing,
    Dir(std::path::PathBuf),
    Schema(tlo::PostgresStore),
}

impl Scratch {
    async fn remove(self) -> anyhow::Result<()> {
        match self {
            Scratch::Nothing => {}
            Scratch::Dir(dir) => std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?,
            Scratch::Schema(pg) => pg.drop_schema().await?,
        }
        Ok(())
    }
}

async fn orchestrator(
    target: &Target,
    concurrency: usize,
    on_done: impl Fn(&tlo::Job) + Send + Sync + 'static,
) -> anyhow::Result<(Tlo, Scratch)> {
    let store = target.store;
    let settings = SettingsBuilder::default().concurrency(concurrency);
    let builder = Tlo::builder().settings(settings).on_task_succeeded(on_done);
    let tlo = match store {
        BenchStore::Memory => (
            builder.store(tlo::MemoryStore::new()).build()?,
            Scratch::Nothing,
        ),
        BenchStore::Sqlite => {
            let dir = std::env::temp_dir().join(format!("tlo-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let sqlite = tlo::SqliteStore::open(dir.join("bench.db"))?;
            let locker = sqlite.locker();
            (
                builder.store(sqlite).locker(locker).build()?,
                Scratch::Dir(dir),
            )
        }
        BenchStore::Postgres => {
            let options = tlo::PostgresOptions {
                schema: format!("tlo_bench_{}", std::process::id()),
                ..tlo::PostgresOptions::default()
            };
            let pg = tlo::PostgresStore::connect_with(&target.database_url, options).await?;
            let locker = pg.locker();
            (
                builder.store(pg.clone()).locker(locker).build()?,
                Scratch::Schema(pg),
            )
        }
    };
    Ok(tlo)
}

/// Inserts `n` no-op jobs, then times the workers until all are done.
pub(crate) async fn drain(
    target: &Target,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let store = target.store;
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let (counter, notify) = (done.clone(), all_done.clone());
    let (tlo, scratch) = orchestrator(target, concurrency, move |_| {
        if counter.fetch_add(1, Ordering::AcqRel) + 1 == n {
            notify.notify_one();
        }
    })
    .await?;
    let noop = tlo.register("noop", TaskOptions::new(), |_ctx, _: ()| async {
        Ok::<_, String>(())
    })?;
    let insert_started = Instant::now();
    const CHUNK: usize = 10_000;
    let mut remaining = n;
    while remaining > 0 {
        let chunk = remaining.min(CHUNK);
        tlo.submit_batch(&noop, std::iter::repeat_n((), chunk))
            .await?;
        remaining -= chunk;
    }
    let insert_secs = insert_started.elapsed().as_secs_f64();
    let started = Instant::now();
    tlo.start()?;
    all_done.notified().await;
    let drain_secs = started.elapsed().as_secs_f64();
    tlo.stop().await?;
    scratch.remove().await?;
    let mut m = base(store, "drain", n, concurrency);
    m.jobs_per_s = Some(round(n as f64 / drain_secs));
    m.insert_per_s = Some(round(n as f64 / insert_secs));
    Ok(m)
}

/// Submits `n` single jobs 20 ms apart and measures submit-to-start latency.
///
/// The submitter runs as a task on the runtime, as application code (an HTTP handler, say)
/// does; submitting from outside the runtime would add a cross-thread wake-up to every job.
pub(crate) async fn latency(
    target: &Target,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    tokio::spawn(measure_latency(target.clone(), n, concurrency)).await?
}

async fn measure_latency(
    target: Target,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let store = target.store;
    let (tlo, scratch) = orchestrator(&target, concurrency, |_| {}).await?;
    let starts: Arc<Vec<std::sync::OnceLock<Instant>>> =
        Arc::new((0..n).map(|_| std::sync::OnceLock::new()).collect());
    let seen = starts.clone();
    let probe = tlo.register("probe", TaskOptions::new(), move |_ctx, i: usize| {
        let _ = seen[i].set(Instant::now());
        async { Ok::<_, String>(()) }
    })?;
    tlo.start()?;
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let submitted = Instant::now();
        let handle = tlo.submit(&probe, i).await?;
        // Sleep the gap first: waiting on the handle right away would compete with the job
        // for the first microseconds and measure the waiter, not the engine.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if starts[i].get().is_none() {
            handle.wait().await?;
        }
        let start = starts[i]
            .get()
            .context("handler did not record its start")?;
        latencies.push(start.duration_since(submitted).as_secs_f64() * 1000.0);
    }
    tlo.stop().await?;
    scratch.remove().await?;
    latencies.sort_by(f64::total_cmp);
    let mut m = base(store, "latency", n, concurrency);
    m.p50_ms = Some(round3(percentile(&latencies, 0.50)));
    m.p95_ms = Some(round3(percentile(&latencies, 0.95)));
    m.p99_ms = Some(round3(percentile(&latencies, 0.99)));
    Ok(m)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn round(x: f64) -> f64 {
    x.round()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `--workload group`: a parent runs `n` no-op children in one parallel group of width `n`.
pub(crate) async fn group(
    target: &Target,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let store = target.store;
    let (tlo, scratch) = orchestrator(target, concurrency, |_| {}).await?;
    let noop = tlo.register("noop", TaskOptions::new(), |_ctx, _: u32| async {
        Ok::<_, String>(())
    })?;
    let parent = tlo.register("parent", TaskOptions::new(), move |ctx, n: u32| {
        let noop = noop.clone();
        async move {
            let children = ctx
                .parallel_group(n as usize, &noop, 0..n, tlo::ChildOptions::default())
                .await
                .map_err(|err| err.to_string())?;
            Ok::<_, String>(children.len())
        }
    })?;
    tlo.start()?;
    let started = Instant::now();
    let ran = tlo.submit(&parent, n as u32).await?.result().await?;
    let secs = started.elapsed().as_secs_f64();
    tlo.stop().await?;
    scratch.remove().await?;
    if ran != n {
        bail!("the group ran {ran} children, not {n}");
    }
    let mut m = base(store, "group", n, concurrency);
    m.group_ms = Some(round3(secs * 1e3));
    m.jobs_per_s = Some(round(n as f64 / secs));
    Ok(m)
}

/// Runs one layered DAG of `n` no-op nodes and reports the time per node.
pub(crate) async fn dag(
    target: &Target,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Measurement> {
    let store = target.store;
    let (tlo, scratch) = orchestrator(target, concurrency, |_| {}).await?;
    tlo.register(
        "noop",
        TaskOptions::new(),
        |_ctx, _: serde_json::Value| async { Ok::<_, String>(()) },
    )?;
    let width = ((n as f64).sqrt().ceil() as usize).max(1);
    let mut builder = tlo::Workflow::builder("bench");
    for i in 0..n {
        let (layer, pos) = (i / width, i % width);
        let mut node = tlo::Node::new(format!("n{i}"), "noop");
        if layer > 0 {
            let previous = (layer - 1) * width;
            let deps: std::collections::BTreeSet<usize> =
                (0..3).map(|k| previous + (pos + k) % width).collect();
            node = node.after(deps.into_iter().map(|d| format!("n{d}")));
        }
        builder = builder.node(node);
    }
    tlo.register_workflow(builder.build()?)?;
    tlo.start()?;
    let started = Instant::now();
    let report = tlo
        .run_workflow("bench", serde_json::json!({}))
        .await?
        .wait()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    tlo.stop().await?;
    scratch.remove().await?;
    if report.state != tlo::JobState::Done {
        bail!("the DAG run ended {}: {:?}", report.state, report.error);
    }
    let mut m = base(store, "dag", n, concurrency);
    m.per_node_us = Some(round3(secs * 1e6 / n as f64));
    m.jobs_per_s = Some(round(n as f64 / secs));
    Ok(m)
}
