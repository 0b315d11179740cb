//! The `tlo` binary: run workers and schedules from a `tlo.toml`, list tasks, check the file,
//! measure throughput and latency.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.

/// The binary's allocator: tlo's jobs are many small, short-lived JSON values moving between
/// threads, where glibc's malloc spends a third of a workflow run consolidating and unlinking
/// chunks (`tlo bench --workload dag`: 30 -> 18 us per node). Embedding applications choose
/// their own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod commands;
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
    /// Run workers only (schedules are fired by `tlo run` elsewhere) until SIGINT or SIGTERM.
    Worker,
    /// Create or upgrade the store's schema, then exit.
    Migrate,
    /// Submit a job of a task of the config file.
    Submit {
        /// The task name.
        task: String,
        /// JSON arguments (default: the task's `args`, else `{}`).
        #[arg(long, value_parser = parse_json)]
        args: Option<serde_json::Value>,
        /// Queue to use instead of the task's.
        #[arg(long)]
        queue: Option<String>,
        /// Run no earlier than this from now: `30s`, `5m`, `1h`.
        #[arg(long, value_parser = parse_delay)]
        delay: Option<std::time::Duration>,
        /// Follow the job to its end; the exit code says how it ended (0 done, 3 failed,
        /// 4 cancelled, 5 skipped).
        #[arg(long)]
        wait: bool,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only jobs in this state (scheduled, running, done, failed, ...).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this task.
        #[arg(long)]
        task: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one job: state, attempts, result or error, log.
    Show {
        /// The job id.
        id: String,
    },
    /// Cancel a job (a running one stops within a second, wherever it runs).
    Cancel {
        /// The job id.
        id: String,
    },
    /// Run an ended job again, with one more attempt.
    Retry {
        /// The job id.
        id: String,
    },
    /// Launch a process of the config file's `[processes]`; with `--wait`, follow it to its
    /// end (exit codes as for `submit --wait`). A refused launch exits with 6.
    Launch {
        /// The process id.
        id: String,
        /// Follow the run to its end.
        #[arg(long)]
        wait: bool,
    },
    /// Put an ended process back to idle, clearing its result, error and progress.
    Dismiss {
        /// The process id.
        id: String,
    },
    /// Refuse launches of the processes whose metadata matches, for every process on the store,
    /// until `tlo unblock`; prints the block's id.
    Block {
        /// Why (shown to whoever is refused).
        #[arg(long)]
        reason: String,
        /// Metadata a process must have to be blocked, `KEY=VALUE` (VALUE is JSON when it
        /// parses as JSON, else a string); repeat for several keys; none blocks every process.
        #[arg(long = "match", value_name = "KEY=VALUE")]
        matches: Vec<String>,
    },
    /// Lift a launch block.
    Unblock {
        /// The block's id (from `tlo block` or `tlo blocks`).
        id: String,
    },
    /// List the persistent launch blocks.
    Blocks,
    /// Show a process (or any job) with its children: states and progress, by depth and order.
    Tree {
        /// The process id, or a job id.
        id: String,
    },
    /// Show a workflow's DAG, as text or Graphviz DOT.
    Dag {
        /// The workflow name.
        name: String,
        /// Print Graphviz DOT instead of text.
        #[arg(long)]
        dot: bool,
    },
    /// Run workflows and read their reports.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
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
        /// Jobs to run (default: 100000 for drain in memory, 20000 on durable stores, 200 for
        /// latency, 1000 children for group).
        #[arg(long)]
        jobs: Option<usize>,
        /// Nodes of the DAG workload (default 1000).
        #[arg(long)]
        nodes: Option<usize>,
        /// Concurrent jobs per worker.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The PostgreSQL server for `--store postgres` (a fresh schema is used and dropped).
        #[arg(
            long,
            env = "TLO_TEST_DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/test"
        )]
        database_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum WorkflowCommand {
    /// Start a run of a workflow of the config file.
    Run {
        /// The workflow name.
        name: String,
        /// JSON input of the run.
        #[arg(long)]
        input: Option<String>,
        /// At most this many nodes at once (default: the workflow's `parallelism`).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Follow the run, node by node, to its end; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
    },
    /// Print a run's report: each node's state, attempts, times, result or error.
    Report {
        /// The run id.
        id: String,
    },
}

/// `--args`: JSON, refused as a usage error (exit 2) when it is not.
fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|err| format!("not JSON ({err})"))
}

/// `--delay`: an interval such as `30s`, refused as a usage error (exit 2) when it is not.
fn parse_delay(text: &str) -> Result<std::time::Duration, String> {
    tlo::Schedule::parse_interval(text).map_err(|err| err.to_string())
}

/// A failure with its exit code.
enum Failure {
    Config(config::ConfigErrors),
    Runtime(anyhow::Error),
    /// The command ran; this is how the job it followed ended.
    Exit(u8),
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

/// The binary's orchestrator: the file's settings, and unless the file or the environment name
/// another store, SQLite in `tlo.db` beside the config file.
async fn orchestrator(cli: &Cli, config: &Config) -> Result<Tlo, Failure> {
    let tlo = orchestrator_with(cli, config, |settings| settings).await?;
    // The file is the definitions provider: processes it names exist on the store.
    config.define_processes(&tlo).await?;
    Ok(tlo)
}

/// Like [`orchestrator`], with a last word on the settings.
async fn orchestrator_with(
    cli: &Cli,
    config: &Config,
    adjust: impl FnOnce(tlo::SettingsBuilder) -> tlo::SettingsBuilder,
) -> Result<Tlo, Failure> {
    let mut settings = config.settings_builder()?;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let chosen = |name: &str| config.value(name).map(str::to_owned).or_else(|| env(name));
    let store = chosen("TLO_TASK_STATE_STORE");
    if store.is_none() {
        settings = settings.store(tlo::StoreKind::Sqlite);
    }
    let sqlite = store
        .as_deref()
        .is_none_or(|s| s.trim().eq_ignore_ascii_case("sqlite"));
    if sqlite && chosen("TLO_DATABASE_URL").is_none() {
        let dir = cli
            .config
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        settings = settings.database_url(dir.join("tlo.db").to_string_lossy());
    }
    let tlo = Tlo::builder().settings(adjust(settings)).connect().await?;
    config.register(&tlo)?;
    Ok(tlo)
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
            for workflow in &config.workflows {
                println!(
                    "{}\tworkflow\t{} nodes\t{}",
                    workflow.workflow.name(),
                    workflow.workflow.nodes().len(),
                    workflow.description.as_deref().unwrap_or("")
                );
            }
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
        Command::Run | Command::Worker => {
            let config = load(&cli)?;
            let tlo = orchestrator(&cli, &config).await?;
            let workers_only = matches!(cli.command, Command::Worker);
            tracing::info!(
                worker = tlo.worker_id(),
                store = tlo.store().name(),
                tasks = config.tasks.len(),
                scheduler = !workers_only,
                "tlo running; stop with Ctrl-C"
            );
            if workers_only {
                tlo.run_workers_until_signal().await?;
            } else {
                tlo.run_until_signal().await?;
            }
            Ok(())
        }
        Command::Migrate => {
            // Connecting applies the migrations, whatever TLO_MIGRATE says.
            let config = load(&cli)?;
            let tlo = orchestrator_with(&cli, &config, |settings| settings.migrate(true)).await?;
            println!("{} store is up to date", tlo.store().name());
            Ok(())
        }
        Command::Submit {
            ref task,
            ref args,
            ref queue,
            ref delay,
            wait,
        } => {
            let config = load(&cli)?;
            let tlo = orchestrator(&cli, &config).await?;
            let default_args = config
                .tasks
                .iter()
                .find(|t| &t.name == task)
                .and_then(|t| t.options.schedule_args.clone());
            let code = commands::submit(
                &tlo,
                task,
                args.clone(),
                default_args,
                queue.clone(),
                *delay,
                wait,
            )
            .await?;
            if code == 0 {
                Ok(())
            } else {
                Err(Failure::Exit(code))
            }
        }
        Command::Jobs {
            ref state,
            ref task,
            limit,
        } => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            Ok(commands::jobs(&tlo, state.as_deref(), task.clone(), limit).await?)
        }
        Command::Show { ref id } => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            Ok(commands::show(&tlo, id).await?)
        }
        Command::Cancel { ref id } => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            Ok(commands::cancel(&tlo, id).await?)
        }
        Command::Retry { ref id } => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            Ok(commands::retry(&tlo, id).await?)
        }
        Command::Launch { ref id, wait } => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            match commands::launch(&tlo, id, wait).await? {
                0 => Ok(()),
                code => Err(Failure::Exit(code)),
            }
        }
        Command::Dismiss { ref id } => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            match commands::dismiss(&tlo, id).await? {
                0 => Ok(()),
                code => Err(Failure::Exit(code)),
            }
        }
        Command::Block {
            ref reason,
            ref matches,
        } => {
            let filter = commands::metadata_filter(matches)
                .map_err(|err| Failure::Config(config::ConfigErrors::single(err.to_string())))?;
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            Ok(commands::block(&tlo, filter, reason).await?)
        }
        Command::Unblock { ref id } => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            Ok(commands::unblock(&tlo, id).await?)
        }
        Command::Blocks => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            Ok(commands::blocks(&tlo).await?)
        }
        Command::Tree { ref id } => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            Ok(commands::tree(&tlo, id).await?)
        }
        Command::Dag { ref name, dot } => {
            let config = load(&cli)?;
            let workflow = config.workflow(name).ok_or_else(|| {
                anyhow::anyhow!("no workflow `{name}` in {}", cli.config.display())
            })?;
            if dot {
                print!("{}", workflow.workflow.to_dot());
            } else {
                if let Some(description) = &workflow.description {
                    println!("{description}");
                }
                print!("{}", workflow.workflow.render_text());
            }
            Ok(())
        }
        Command::Workflow(WorkflowCommand::Run {
            ref name,
            ref input,
            parallelism,
            wait,
        }) => {
            let config = load(&cli)?;
            let default_parallelism = config.workflow(name).and_then(|w| w.parallelism);
            let tlo = orchestrator(&cli, &config).await?;
            let code = commands::workflow_run(
                &tlo,
                name,
                input.as_deref(),
                parallelism.or(default_parallelism),
                wait,
            )
            .await?;
            if code == 0 {
                Ok(())
            } else {
                Err(Failure::Exit(code))
            }
        }
        Command::Workflow(WorkflowCommand::Report { ref id }) => {
            let tlo = orchestrator(&cli, &load(&cli)?).await?;
            Ok(commands::workflow_report(&tlo, id).await?)
        }
        Command::Bench {
            store,
            workload,
            jobs,
            nodes,
            concurrency,
            ref database_url,
        } => {
            let target = bench::Target {
                store,
                database_url: database_url.clone(),
            };
            let default_jobs = if store == BenchStore::Memory {
                100_000
            } else {
                20_000
            };
            for (flag, count) in [("--jobs", jobs), ("--nodes", nodes)] {
                if count == Some(0) {
                    return Err(anyhow::anyhow!("{flag} must be at least 1").into());
                }
            }
            let measurement = match workload {
                Workload::Drain => {
                    bench::drain(&target, jobs.unwrap_or(default_jobs), concurrency).await?
                }
                Workload::Latency => {
                    bench::latency(&target, jobs.unwrap_or(200), concurrency).await?
                }
                Workload::Dag => {
                    bench::dag(&target, nodes.or(jobs).unwrap_or(1_000), concurrency).await?
                }
                Workload::Group => {
                    bench::group(&target, jobs.unwrap_or(1_000), concurrency).await?
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
