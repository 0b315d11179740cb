//! The `tlo` binary: run workers and schedules from a `tlo.toml`, list tasks, check the file,
//! measure throughput and latency.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.

mod bench;
mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tlo::Tlo;

use crate::bench::{BenchStore, Workload};
use crate::config::Config;

/// Background work from a config file of shell-command tasks.
#[derive(Debug, Parser)]
#[command(name = "tlo", version, about)]
struct Cli {
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "tlo.toml",
        env = "TLO_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run workers and the scheduler until SIGINT or SIGTERM.
    Run,
    /// List the tasks the config file defines.
    ListTasks,
    /// Validate the config file; print every problem with its line.
    Check,
    /// Measure throughput (drain) or latency; prints one JSON line.
    Bench {
        /// The store to measure.
        #[arg(long, value_enum, default_value = "memory")]
        store: BenchStore,
        /// What to measure.
        #[arg(long, value_enum, default_value = "drain")]
        workload: Workload,
        /// Jobs to run (default: 100000 for drain, 200 for latency).
        #[arg(long)]
        jobs: Option<usize>,
        /// Concurrent jobs per worker.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

/// A failure with its exit code.
enum Failure {
    Config(config::ConfigErrors),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::Runtime(err)
    }
}

impl From<tlo::Error> for Failure {
    fn from(err: tlo::Error) -> Self {
        match err {
            tlo::Error::InvalidSetting { .. } | tlo::Error::InvalidSchedule { .. } => {
                Failure::Config(config::ConfigErrors::single(err.to_string()))
            }
            other => Failure::Runtime(other.into()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TLO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tlo: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(errors)) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("tlo: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn load(cli: &Cli) -> Result<Config, Failure> {
    Config::load(&cli.config).map_err(Failure::Config)
}

async fn execute(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Check => {
            let config = load(&cli)?;
            println!(
                "{}: ok ({} tasks)",
                cli.config.display(),
                config.tasks.len()
            );
            Ok(())
        }
        Command::ListTasks => {
            let config = load(&cli)?;
            for task in &config.tasks {
                let schedule = task.schedule_description.as_deref().unwrap_or("-");
                let queue = task.options.queue.as_deref().unwrap_or("default");
                let description = task.options.description.as_deref().unwrap_or("");
                println!(
                    "{}\tqueue={queue}\tschedule={schedule}\t{description}",
                    task.name
                );
            }
            Ok(())
        }
        Command::Run => {
            let config = load(&cli)?;
            let tlo = Tlo::builder()
                .settings(config.settings_builder()?)
                .build()?;
            config.register(&tlo)?;
            tracing::info!(
                worker = tlo.worker_id(),
                store = tlo.store().name(),
                tasks = config.tasks.len(),
                "tlo running; stop with Ctrl-C"
            );
            tlo.run_until_signal().await?;
            Ok(())
        }
        Command::Bench {
            store,
            workload,
            jobs,
            concurrency,
        } => {
            let measurement = match workload {
                Workload::Drain => {
                    bench::drain(store, jobs.unwrap_or(100_000), concurrency).await?
                }
                Workload::Latency => {
                    bench::latency(store, jobs.unwrap_or(200), concurrency).await?
                }
            };
            println!(
                "{}",
                serde_json::to_string(&measurement).map_err(anyhow::Error::from)?
            );
            Ok(())
        }
    }
}
