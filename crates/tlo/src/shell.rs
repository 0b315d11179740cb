//! Shell-command tasks: a subprocess per job, its output in the job log.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tlo_core::{LogLevel, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

use crate::template::Template;

/// Longest log line kept from a subprocess; longer lines are cut with a marker.
const MAX_LINE: usize = 64 * 1024;

/// What a command prints on stdout to report its progress: `::progress 40 copying files`.
const PROGRESS: &str = "::progress ";

/// The progress a stdout line reports (`::progress PERCENT [MESSAGE]`, percent 0-100), or
/// `None` for an ordinary line (logged as it is).
pub(crate) fn progress_line(line: &str) -> Option<(f64, String)> {
    let rest = line.strip_prefix(PROGRESS)?.trim_start();
    let (percent, message) = rest.split_once(' ').unwrap_or((rest, ""));
    let percent: f64 = percent.parse().ok().filter(|p: &f64| p.is_finite())?;
    Some((percent, message.trim().to_owned()))
}

/// A task that runs a shell command; `{name}` placeholders are filled from the job's arguments,
/// each value quoted for the shell.
///
/// ```
/// let backup = tlo::ShellCommand::new("pg_dump {db} > /tmp/{db}.sql")
///     .unwrap()
///     .env("PGHOST", "localhost")
///     .workdir("/tmp");
/// assert_eq!(backup.template().source(), "pg_dump {db} > /tmp/{db}.sql");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ShellCommand {
    template: Template,
    shell: String,
    env: Vec<(String, String)>,
    workdir: Option<PathBuf>,
}

impl ShellCommand {
    /// A command run with `sh -c`.
    pub fn new(command: &str) -> Result<ShellCommand> {
        Ok(ShellCommand {
            template: Template::parse(command)?,
            shell: "sh".into(),
            env: Vec::new(),
            workdir: None,
        })
    }
    /// Runs with another shell (`bash`, ...), still as `<shell> -c <command>`.
    pub fn shell(mut self, program: impl Into<String>) -> Self {
        self.shell = program.into();
        self
    }
    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Runs in this directory.
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }
    /// The command template.
    pub fn template(&self) -> &Template {
        &self.template
    }
}

/// What the runner needs from the job it runs.
pub(crate) struct ShellRun<'a> {
    pub(crate) task: &'a str,
    pub(crate) job_id: String,
    pub(crate) attempt: u32,
    pub(crate) args: &'a Value,
    pub(crate) cancel: CancellationToken,
    pub(crate) grace: Duration,
}

/// How a subprocess ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ShellFailure {
    Failed(String),
    Cancelled,
    Forced(String),
}

/// Kills the whole process group unless disarmed: dropping a running job (timeout) must not
/// leave its subprocesses behind.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(group) = self.0 {
            let _ = killpg(group, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

fn describe(status: ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => None,
        (Some(code), _) => Some(format!("command exited with code {code}")),
        (None, Some(signal)) => Some(match Signal::try_from(signal) {
            Ok(name) => format!("command killed by signal {name}"),
            Err(_) => format!("command killed by signal {signal}"),
        }),
        (None, None) => Some("command ended without an exit code".into()),
    }
}

async fn pump(
    stream: Option<impl AsyncRead + Unpin>,
    level: LogLevel,
    log: &(impl Fn(LogLevel, String) + Sync),
) {
    let Some(stream) = stream else { return };
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                let mut line = String::from_utf8_lossy(&buf).into_owned();
                if line.len() > MAX_LINE {
                    let mut cut = MAX_LINE;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                    line.push_str(" [line truncated]");
                }
                log(level, line);
            }
        }
    }
}

/// Runs `cmd` for one job: stdout lines are logged at `info` (except progress lines, see
/// [`progress_line`]: the caller's `log` tells them apart), stderr at `warning`. On cancel the
/// process group gets SIGTERM, then SIGKILL after the grace period.
/// Has the kernel kill the command (SIGKILL) if the worker process dies first, so that a worker
/// killed with SIGKILL leaves no command running on while its job is rescued and run again.
/// (Linux signals the death of the thread that started the command: commands start on the
/// runtime's worker threads, which live as long as the runtime.)
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_worker(command: &mut tokio::process::Command) {
    let worker = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec. It only calls prctl(2) and
    // getppid(2), both async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The worker may have died before the line above: then nobody would kill us.
            if nix::unistd::getppid().as_raw() as u32 != worker {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_worker(_command: &mut tokio::process::Command) {}

pub(crate) async fn run_shell(
    cmd: &ShellCommand,
    run: ShellRun<'_>,
    log: impl Fn(LogLevel, String) + Send + Sync,
) -> Result<Value, ShellFailure> {
    let line = cmd
        .template
        .render_shell(run.task, run.args)
        .map_err(|err| ShellFailure::Failed(err.to_string()))?;
    let mut command = tokio::process::Command::new(&cmd.shell);
    command
        .arg("-c")
        .arg(&line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .env("TLO_JOB_ID", &run.job_id)
        .env("TLO_ATTEMPT", run.attempt.to_string())
        .env("TLO_TASK", run.task)
        .env("TLO_ARGS", run.args.to_string())
        .envs(cmd.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &cmd.workdir {
        command.current_dir(dir);
    }
    die_with_worker(&mut command);
    let mut child = command
        .spawn()
        .map_err(|err| ShellFailure::Failed(format!("could not start `{}`: {err}", cmd.shell)))?;
    let guard = GroupGuard(
        child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw),
    );
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let ended = async {
        tokio::select! {
            status = child.wait() => status.map(|s| (s, false)),
            _ = run.cancel.cancelled() => {
                guard.signal(Signal::SIGTERM);
                match tokio::time::timeout(run.grace, child.wait()).await {
                    Ok(status) => status.map(|s| (s, false)),
                    Err(_) => {
                        guard.signal(Signal::SIGKILL);
                        child.wait().await.map(|s| (s, true))
                    }
                }
            }
        }
    };
    let ended = async {
        let ended = ended.await;
        // The command is over: whatever it left running in its group goes too, so that the
        // output pipes close.
        guard.signal(Signal::SIGKILL);
        ended
    };
    let ((), (), ended) = tokio::join!(
        pump(stdout, LogLevel::Info, &log),
        pump(stderr, LogLevel::Warning, &log),
        ended
    );
    let (status, forced) =
        ended.map_err(|err| ShellFailure::Failed(format!("waiting for the command: {err}")))?;
    if forced {
        return Err(ShellFailure::Forced(format!(
            "did not unwind within the grace period of {}s; killed",
            run.grace.as_secs_f64()
        )));
    }
    if run.cancel.is_cancelled() {
        return Err(ShellFailure::Cancelled);
    }
    match describe(status) {
        None => Ok(json!({ "exit_code": 0 })),
        Some(error) => Err(ShellFailure::Failed(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    async fn run(
        command: &str,
        args: Value,
        cancel: CancellationToken,
    ) -> (Result<Value, ShellFailure>, Vec<(LogLevel, String)>) {
        let cmd = ShellCommand::new(command).unwrap();
        let lines = Mutex::new(Vec::new());
        let run = ShellRun {
            task: "t",
            job_id: "j1".into(),
            attempt: 2,
            args: &args,
            cancel,
            grace: Duration::from_millis(300),
        };
        let result = run_shell(&cmd, run, |level, line| lines.lock().push((level, line))).await;
        (result, lines.into_inner())
    }

    #[test]
    fn progress_lines_are_told_from_ordinary_output() {
        assert_eq!(
            progress_line("::progress 40 copying files"),
            Some((40.0, "copying files".to_owned()))
        );
        assert_eq!(
            progress_line("::progress 12.5"),
            Some((12.5, String::new()))
        );
        assert_eq!(progress_line("::progress lots"), None);
        assert_eq!(progress_line("::progress NaN"), None);
        assert_eq!(progress_line("progress 40"), None);
        assert_eq!(progress_line(" ::progress 40"), None);
    }

    #[tokio::test]
    async fn logs_both_streams_and_sees_its_environment() {
        let (result, lines) = run(
            "echo out {x}; echo err >&2; echo $TLO_JOB_ID $TLO_ATTEMPT $TLO_TASK $TLO_ARGS",
            json!({"x": "it's"}),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(result.unwrap(), json!({"exit_code": 0}));
        assert!(
            lines.contains(&(LogLevel::Info, "out it's".into())),
            "{lines:?}"
        );
        assert!(lines.contains(&(LogLevel::Warning, "err".into())));
        assert!(
            lines.contains(&(LogLevel::Info, r#"j1 2 t {"x":"it's"}"#.into())),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn exit_code_and_signal_are_named() {
        let (result, _) = run("exit 7", json!({}), CancellationToken::new()).await;
        assert_eq!(
            result,
            Err(ShellFailure::Failed("command exited with code 7".into()))
        );
        let (result, _) = run("kill -9 $$", json!({}), CancellationToken::new()).await;
        assert_eq!(
            result,
            Err(ShellFailure::Failed(
                "command killed by signal SIGKILL".into()
            ))
        );
    }

    #[tokio::test]
    async fn cancel_sends_sigterm_then_sigkill_after_grace() {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.cancel();
        });
        let (result, _) = run("sleep 30", json!({}), cancel).await;
        assert_eq!(result, Err(ShellFailure::Cancelled));

        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.cancel();
        });
        let started = std::time::Instant::now();
        let (result, _) = run("trap '' TERM; sleep 30 & wait; sleep 30", json!({}), cancel).await;
        assert!(matches!(result, Err(ShellFailure::Forced(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_process_group() {
        let pidfile = std::env::temp_dir().join(format!("tlo-shell-{}.pid", std::process::id()));
        let command = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let outcome = tokio::time::timeout(
            Duration::from_millis(300),
            run(&command, json!({}), CancellationToken::new()),
        )
        .await;
        assert!(outcome.is_err(), "timed out");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A zombie still answers kill(0) until reaped; check /proc state instead.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "grandchild alive: {state}"
        );
        let _ = std::fs::remove_file(pidfile);
    }
}
