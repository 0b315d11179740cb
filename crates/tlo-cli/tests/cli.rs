//! The `tlo` binary end to end: exit codes, every config error with its line, graceful stop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tlo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tlo"));
    // The machine's TLO_* variables must not change what these tests see.
    for (key, _) in std::env::vars() {
        if key.starts_with("TLO_") {
            command.env_remove(key);
        }
    }
    command
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tlo.toml")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tlo-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run tlo")
}

#[test]
fn check_accepts_the_example_config() {
    let out = run(tlo().arg("--config").arg(example()).arg("check"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ok (4 tasks)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_reports_every_error_with_its_line_and_exits_2() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid.toml");
    let out = run(tlo().arg("-c").arg(&fixture).arg("check"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    for needle in [
        "invalid.toml:3:",  // concurrency = "lots"
        "invalid.toml:6:",  // comand
        "invalid.toml:11:", // every and cron together
        "comand",
        "TLO_CONCURRENCY",
    ] {
        assert!(stderr.contains(needle), "missing {needle} in:\n{stderr}");
    }
}

#[test]
fn list_tasks_shows_names_queues_and_schedules() {
    let out = run(tlo().arg("-c").arg(example()).arg("list-tasks"));
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("heartbeat\tqueue=default\tschedule=every 10s"),
        "{stdout}"
    );
    assert!(stdout.contains("nightly_report\tqueue=reports"), "{stdout}");
}

#[test]
fn run_with_an_invalid_cron_starts_nothing() {
    let dir = scratch("badcron");
    let marker = dir.join("ran");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        format!(
            "[tasks.a]\ncommand = \"touch {}\"\nevery = \"1s\"\n\n[tasks.b]\ncommand = \"true\"\ncron = \"99 * * * *\"\n",
            marker.display()
        ),
    )
    .unwrap();
    let out = run(tlo().arg("-c").arg(&config).arg("run"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("tlo.toml:7:"),
        "{}",
        text(&out.stderr)
    );
    assert!(!marker.exists(), "a task ran although the file is invalid");
}

#[test]
fn missing_config_file_is_named() {
    let out = run(tlo().args(["-c", "/nonexistent/tlo.toml", "check"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/tlo.toml"));
}

/// `tlo run` on `config`, its stderr kept for the test to read.
fn spawn_run(config: &Path) -> std::process::Child {
    tlo()
        .arg("-c")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// Waits for `child` to exit before `deadline`; its status and stderr.
fn exit_before(
    mut child: std::process::Child,
    deadline: Instant,
    what: &str,
) -> (std::process::ExitStatus, String) {
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, text(&child.wait_with_output().unwrap().stderr))
}

#[test]
fn run_executes_scheduled_shell_tasks_and_stops_gracefully_on_sigterm() {
    let dir = scratch("run");
    let out_file = dir.join("out.txt");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        format!(
            "[settings]\ntick_interval = 0.1\n\n[tasks.tick]\ncommand = \"echo tick >> {}\"\nevery = \"1h\"\n",
            out_file.display()
        ),
    )
    .unwrap();
    let child = spawn_run(&config);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(out_file.exists(), "the scheduled task never ran");
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let (status, stderr) = exit_before(child, deadline, "tlo did not stop on SIGTERM");
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "tick\n");
}

#[test]
fn a_second_sigint_ends_a_drain_and_puts_the_running_job_back() {
    let dir = scratch("second-sigint");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[settings]\npoll_interval_ms = 50\n\n\
         [tasks.endless]\ncommand = \"sleep 600\"\ncancellable = false\n",
    )
    .unwrap();
    let cli = |args: &[&str]| run(tlo().arg("-c").arg(&config).args(args));
    let mut child = spawn_run(&config);
    let job = text(&cli(&["submit", "endless"]).stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&cli(&["show", &job]).stdout).contains("state:     running") {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, nix::sys::signal::Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first SIGINT drains"
    );
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let (status, stderr) = exit_before(child, deadline, "tlo did not stop on a second SIGINT");
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("second signal"), "{stderr}");
    let shown = text(&cli(&["show", &job]).stdout);
    assert!(
        shown.contains("state:     scheduled"),
        "back in the queue: {shown}"
    );
}

#[test]
fn bench_prints_one_json_line_per_measurement() {
    for (workload, jobs, fields) in [
        ("drain", "2000", &["jobs_per_s", "insert_per_s"][..]),
        ("latency", "5", &["p50_ms", "p95_ms", "p99_ms"][..]),
        ("group", "200", &["group_ms", "jobs_per_s"][..]),
    ] {
        let out = run(tlo().args([
            "bench",
            "--store",
            "memory",
            "--workload",
            workload,
            "--jobs",
            jobs,
        ]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        for field in [
            "system",
            "version",
            "backend",
            "workload",
            "n",
            "concurrency",
            "cores",
        ]
        .iter()
        .chain(fields)
        {
            assert!(line.get(field).is_some(), "{field} missing in {stdout}");
        }
        assert_eq!(line["system"], "tlo");
        assert_eq!(line["workload"], workload);
        assert_eq!(line["n"].as_u64().unwrap().to_string(), jobs);
    }
}

#[test]
fn bench_refuses_zero_jobs() {
    let out = run(tlo().args(["bench", "--jobs", "0"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--jobs"));
}

/// Starts `tlo run` on `config`; kills it on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_run(config: &Path) -> Running {
    Running(
        tlo()
            .arg("-c")
            .arg(config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn a_second_terminal_submits_watches_cancels_and_retries_against_a_running_tlo() {
    let dir = scratch("second-terminal");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[settings]\npoll_interval_ms = 100\n\n\
         [tasks.hello]\ncommand = \"echo hello {name}\"\nargs = { name = \"world\" }\n\n\
         [tasks.fail]\ncommand = \"echo about to fail >&2; exit 7\"\n\n\
         [tasks.slow]\ncommand = \"sleep 30\"\n",
    )
    .unwrap();
    let _run = start_run(&config);
    let cli = |args: &[&str]| run(tlo().arg("-c").arg(&config).args(args));

    let out = cli(&["submit", "hello", "--args", r#"{"name": "Ada"}"#, "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let hello = text(&out.stdout).lines().next().unwrap().to_string();
    let shown = text(&cli(&["show", &hello]).stdout);
    assert!(shown.contains("state:     done"), "{shown}");
    assert!(shown.contains("hello Ada"), "the log holds stdout: {shown}");

    let out = cli(&["submit", "fail", "--wait"]);
    assert_eq!(out.status.code(), Some(3), "failed jobs exit 3");
    assert!(text(&out.stderr).contains("code 7"));
    let failed = text(&out.stdout).lines().next().unwrap().to_string();

    let out = cli(&["submit", "slow"]);
    let slow = text(&out.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&cli(&["show", &slow]).stdout).contains("state:     running") {
        assert!(Instant::now() < deadline, "slow job never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let asked = Instant::now();
    assert!(cli(&["cancel", &slow]).status.success());
    while !text(&cli(&["show", &slow]).stdout).contains("state:     cancelled") {
        assert!(Instant::now() < deadline, "cancel never reached the worker");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        asked.elapsed()
    );

    let listed = text(&cli(&["jobs", "--state", "failed"]).stdout);
    assert!(
        listed.contains(&failed) && !listed.contains(&hello),
        "{listed}"
    );
    assert!(cli(&["retry", &failed]).status.success());
    while !text(&cli(&["show", &failed]).stdout).contains("attempt 2: failed") {
        assert!(Instant::now() < deadline, "retried job never ran again");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cli(&["show", "not-an-id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not-an-id"));
}

#[test]
fn unreachable_store_is_named() {
    let dir = scratch("unreachable");
    let config = dir.join("tlo.toml");
    std::fs::write(&config, "[tasks.a]\ncommand = \"true\"\n").unwrap();
    let out = run(tlo()
        .arg("-c")
        .arg(&config)
        .env("TLO_DATABASE_URL", "sqlite:///proc/forbidden/tlo.db")
        .arg("jobs"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/proc/forbidden"), "{stderr}");
    // A store error once printed its message twice (as the error and again as its source).
    assert_eq!(stderr.matches("/proc/forbidden").count(), 1, "{stderr}");
}

#[test]
fn dag_renders_the_example_workflow_as_text_and_dot() {
    let out = run(tlo().arg("-c").arg(example()).args(["dag", "nightly"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("workflow nightly (4 nodes)"), "{stdout}");
    assert!(
        stdout.contains("publish [nightly.publish] <- build, check"),
        "{stdout}"
    );
    let dot = text(
        &run(tlo()
            .arg("-c")
            .arg(example())
            .args(["dag", "nightly", "--dot"]))
        .stdout,
    );
    assert!(dot.contains("\"prepare\" -> \"build\";"), "{dot}");
}

#[test]
fn check_names_workflow_cycles_unknown_tasks_and_bad_nodes_with_their_lines() {
    let dir = scratch("badflow");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[tasks.t]\ncommand = \"true\"\n\n\
         [workflows.loop.nodes.a]\ntask = \"t\"\nafter = [\"b\"]\n\n\
         [workflows.loop.nodes.b]\ntask = \"t\"\nafter = [\"a\"]\n\n\
         [workflows.ghost.nodes.x]\ntask = \"nope\"\n\n\
         [workflows.both.nodes.y]\ntask = \"t\"\ncommand = \"true\"\n",
    )
    .unwrap();
    let out = run(tlo().arg("-c").arg(&config).arg("check"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    for needle in [
        "has a cycle: a -> b -> a",
        "names task `nope`",
        "tlo.toml:12:",
        "has both `task` and `command`",
    ] {
        assert!(stderr.contains(needle), "missing {needle} in:\n{stderr}");
    }
}

#[test]
fn a_workflow_runs_from_a_second_terminal_and_reports_its_nodes() {
    let dir = scratch("workflow-run");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[settings]\npoll_interval_ms = 50\n\n\
         [workflows.ok.nodes.first]\ncommand = \"echo one\"\n\
         [workflows.ok.nodes.second]\ncommand = \"echo two\"\nafter = [\"first\"]\n\n\
         [workflows.bad.nodes.first]\ncommand = \"exit 4\"\n\
         [workflows.bad.nodes.second]\ncommand = \"echo never\"\nafter = [\"first\"]\n",
    )
    .unwrap();
    let _run = start_run(&config);
    let cli = |args: &[&str]| run(tlo().arg("-c").arg(&config).args(args));
    let out = cli(&["workflow", "run", "ok", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(": done"), "{stdout}");
    let run_id = stdout.lines().next().unwrap().to_string();
    let report = text(&cli(&["workflow", "report", &run_id]).stdout);
    assert!(
        report.contains("second") && report.contains("done"),
        "{report}"
    );
    // A run is a tree of plain jobs (no process descriptor): each line names its task.
    let out = cli(&["tree", &run_id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tree = text(&out.stdout);
    assert_eq!(tree.lines().count(), 3, "the run and its two nodes: {tree}");
    assert!(tree.lines().skip(1).all(|l| l.starts_with("  ")), "{tree}");

    let out = cli(&["workflow", "run", "bad", "--wait"]);
    assert_eq!(out.status.code(), Some(3), "a failed run exits 3");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("UPSTREAM_FAILED"), "{stdout}");
    assert!(stdout.contains("command exited with code 4"), "{stdout}");
}

#[test]
fn a_config_process_is_launched_dismissed_and_shown_from_a_second_terminal() {
    let dir = scratch("processes");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[settings]\npoll_interval_ms = 50\n\n\
         [tasks.greet]\ncommand = \"echo hello {name}\"\n\n\
         [processes.greeter]\ntask = \"greet\"\nname = \"Greeter\"\n\
         params = { name = \"Ada\" }\nmetadata = { team = \"core\" }\n",
    )
    .unwrap();
    let _run = start_run(&config);
    let cli = |args: &[&str]| run(tlo().arg("-c").arg(&config).args(args));

    let tree = text(&cli(&["tree", "greeter"]).stdout);
    assert!(tree.starts_with("Greeter\tidle\t"), "{tree}");
    let out = cli(&["launch", "greeter", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let tree = text(&cli(&["tree", "greeter"]).stdout);
    assert!(tree.starts_with("Greeter\tdone\t"), "{tree}");

    let out = cli(&["launch", "nobody"]);
    assert_eq!(out.status.code(), Some(6), "a refused launch exits 6");
    assert!(
        text(&out.stderr).contains("not-found"),
        "{}",
        text(&out.stderr)
    );

    let out = cli(&["dismiss", "greeter"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "greeter idle");
    let out = cli(&["dismiss", "greeter"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(
        text(&out.stderr).contains("not-dismissable"),
        "{}",
        text(&out.stderr)
    );

    // A persistent launch block, set from one terminal, refuses launches from another.
    let out = cli(&["block", "--reason", "deploy", "--match", "team=core"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let block = text(&out.stdout).trim().to_owned();
    let listed = text(&cli(&["blocks"]).stdout);
    assert_eq!(
        listed.trim(),
        format!("{block}\t{{\"team\":\"core\"}}\tdeploy")
    );
    let out = cli(&["launch", "greeter"]);
    assert_eq!(out.status.code(), Some(6), "a blocked launch exits 6");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("launch-blocked") && stderr.contains("deploy"),
        "{stderr}"
    );
    let out = cli(&["block", "--reason", "x", "--match", "team"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--match `team`: expected KEY=VALUE"));
    assert_eq!(cli(&["unblock", &block]).status.code(), Some(0));
    let out = cli(&["unblock", &block]);
    assert_eq!(out.status.code(), Some(1), "an unknown block is an error");
    assert!(
        text(&out.stderr).contains("no launch block"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&["launch", "greeter", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_config_process_with_a_schedule_is_launched_by_tlo_run() {
    let dir = scratch("scheduled-process");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[settings]\npoll_interval_ms = 50\ntick_interval = 0.1\n\n\
         [tasks.greet]\ncommand = \"echo hello {name}\"\n\n\
         [processes.greeter]\ntask = \"greet\"\nparams = { name = \"Ada\" }\nevery = \"1h\"\n",
    )
    .unwrap();
    let _run = start_run(&config);
    let cli = |args: &[&str]| run(tlo().arg("-c").arg(&config).args(args));
    // An interval fires on the first tick: the process runs once, then waits an hour.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tree = text(&cli(&["tree", "greeter"]).stdout);
        if tree.starts_with("greeter\tdone\t") {
            break;
        }
        assert!(Instant::now() < deadline, "never launched: {tree}");
        std::thread::sleep(Duration::from_millis(100));
    }

    std::fs::write(
        &config,
        "[tasks.greet]\ncommand = \"echo hi\"\n\n\
         [processes.greeter]\ntask = \"greet\"\nevery = \"1h\"\ncron = \"0 2 * * *\"\n",
    )
    .unwrap();
    let out = run(tlo().arg("-c").arg(&config).arg("check"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(":7:1: `every` and `cron` in [processes.greeter] are mutually exclusive"),
        "{stderr}"
    );
}

#[test]
fn check_names_a_process_without_a_known_task_with_its_line() {
    let dir = scratch("bad-process");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[tasks.greet]\ncommand = \"echo hi\"\n\n\
         [processes.one]\ntask = \"gret\"\n\n\
         [processes.two]\nname = \"no task\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let out = run(tlo().arg("-c").arg(&config).arg("check"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(":5:8: process `one` names task `gret`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(":9:1: unknown key `colour` in [processes.two]"),
        "{stderr}"
    );
}

/// The value of `tlo show`'s `label:` line.
fn shown_field(shown: &str, label: &str) -> String {
    shown
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} in {shown}"))
        .trim()
        .to_owned()
}

/// Seconds of the day of a `YYYY-MM-DD HH:MM:SS` time as `tlo show` prints it.
fn seconds_of_day(time: &str) -> i64 {
    let clock = time.split(' ').nth(1).unwrap_or_else(|| panic!("{time}"));
    clock
        .split(':')
        .map(|part| part.parse::<i64>().unwrap_or_else(|_| panic!("{time}")))
        .fold(0, |seconds, part| seconds * 60 + part)
}

/// Polls `tlo show ID` until its state line says `state`; the last output.
fn wait_for_state(config: &Path, id: &str, state: &str, deadline: Instant) -> String {
    let wanted = format!("state:     {state}\n");
    loop {
        let shown = text(&run(tlo().arg("-c").arg(config).args(["show", id])).stdout);
        if shown.contains(&wanted) {
            return shown;
        }
        assert!(Instant::now() < deadline, "never {state}: {shown}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn submit_queue_puts_the_job_in_that_queue_and_only_workers_serving_it_run_it() {
    let dir = scratch("submit-queue");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[settings]\npoll_interval_ms = 50\nqueues = [\"default\", \"side\"]\n\n\
         [tasks.hello]\ncommand = \"echo hello\"\n",
    )
    .unwrap();
    let _run = start_run(&config);
    let cli = |args: &[&str]| run(tlo().arg("-c").arg(&config).args(args));

    let out = cli(&["submit", "hello", "--queue", "side", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let side = text(&out.stdout).lines().next().unwrap().to_string();
    let shown = text(&cli(&["show", &side]).stdout);
    assert!(shown.contains("queue:     side ("), "{shown}");

    // A queue no worker serves: the job waits there, while a later job of the default queue runs.
    let out = cli(&["submit", "hello", "--queue", "elsewhere"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let parked = text(&out.stdout).trim().to_string();
    let out = cli(&["submit", "hello", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&cli(&["show", &parked]).stdout);
    assert!(shown.contains("queue:     elsewhere ("), "{shown}");
    assert!(shown.contains("state:     scheduled\n"), "{shown}");
    let listed = text(&cli(&["jobs", "--state", "scheduled"]).stdout);
    let line = listed.lines().find(|l| l.starts_with(&parked));
    assert!(
        line.is_some_and(|l| l.split_whitespace().nth(4) == Some("elsewhere")),
        "{listed}"
    );
}

#[test]
fn submit_delay_holds_the_job_until_its_eta_then_runs_it() {
    let dir = scratch("submit-delay");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[settings]\npoll_interval_ms = 50\n\n[tasks.hello]\ncommand = \"echo hello\"\n",
    )
    .unwrap();
    let _run = start_run(&config);
    let cli = |args: &[&str]| run(tlo().arg("-c").arg(&config).args(args));

    let submitted = Instant::now();
    let out = cli(&["submit", "hello", "--delay", "2s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let shown = text(&cli(&["show", &id]).stdout);
    // Whole seconds: 2 s after creation, give or take the rounding of both times.
    let ahead = (seconds_of_day(&shown_field(&shown, "eta"))
        - seconds_of_day(&shown_field(&shown, "created")))
    .rem_euclid(86_400);
    assert!(
        (1..=3).contains(&ahead),
        "eta {ahead}s after creation: {shown}"
    );

    let shown = wait_for_state(
        &config,
        &id,
        "done",
        Instant::now() + Duration::from_secs(15),
    );
    assert!(
        submitted.elapsed() >= Duration::from_secs(2),
        "ran {:?} after its submit, before its eta: {shown}",
        submitted.elapsed()
    );
}

#[test]
fn jobs_task_lists_only_the_jobs_of_that_task() {
    let dir = scratch("jobs-task");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[tasks.alpha]\ncommand = \"true\"\n\n[tasks.alphabet]\ncommand = \"true\"\n",
    )
    .unwrap();
    let cli = |args: &[&str]| run(tlo().arg("-c").arg(&config).args(args));
    let submit = |task: &str| {
        let out = cli(&["submit", task]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    // No worker: the jobs stay scheduled, to be listed.
    let alphas = [submit("alpha"), submit("alpha")];
    let alphabet = submit("alphabet");

    for (task, mine, others) in [
        ("alpha", &alphas[..], &[alphabet.clone()][..]),
        ("alphabet", &[alphabet.clone()][..], &alphas[..]),
    ] {
        let out = cli(&["jobs", "--task", task]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let listed = text(&out.stdout);
        let rows: Vec<&str> = listed.lines().skip(1).collect();
        assert_eq!(rows.len(), mine.len(), "--task {task}:\n{listed}");
        assert!(
            rows.iter()
                .all(|row| row.split_whitespace().nth(1) == Some(task)),
            "--task {task}:\n{listed}"
        );
        assert!(mine.iter().all(|id| listed.contains(id)), "{listed}");
        assert!(!others.iter().any(|id| listed.contains(id)), "{listed}");
    }
}

#[test]
fn submit_wait_exits_4_when_another_terminal_cancels_the_job() {
    use std::io::BufRead;

    let dir = scratch("wait-cancelled");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[settings]\npoll_interval_ms = 50\n\n[tasks.slow]\ncommand = \"sleep 30\"\n",
    )
    .unwrap();
    let _run = start_run(&config);
    let mut waiting = tlo()
        .arg("-c")
        .arg(&config)
        .args(["submit", "slow", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = String::new();
    std::io::BufReader::new(waiting.stdout.take().unwrap())
        .read_line(&mut id)
        .unwrap();
    let id = id.trim().to_string();
    assert!(!id.is_empty(), "submit printed no job id");
    let deadline = Instant::now() + Duration::from_secs(15);
    wait_for_state(&config, &id, "running", deadline);

    let out = run(tlo().arg("-c").arg(&config).args(["cancel", &id]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (status, stderr) = exit_before(waiting, deadline, "submit --wait never returned");
    assert_eq!(status.code(), Some(4), "cancelled jobs exit 4: {stderr}");
    assert!(stderr.contains(&format!("job {id} cancelled")), "{stderr}");
}

#[test]
fn unreachable_postgres_store_is_named_without_its_password() {
    let dir = scratch("unreachable-postgres");
    let config = dir.join("tlo.toml");
    std::fs::write(&config, "[tasks.a]\ncommand = \"true\"\n").unwrap();
    // Nothing listens on port 1: the connection is refused at once.
    for (url, named) in [
        (
            "postgres://postgres@127.0.0.1:1/test",
            "postgres://postgres@127.0.0.1:1/test",
        ),
        (
            "postgres://u:secret@127.0.0.1:1/x",
            "postgres://u@127.0.0.1:1/x",
        ),
        (
            "postgres://u:se?cret@127.0.0.1:1/x",
            "postgres://u@127.0.0.1:1/x",
        ),
        (
            "postgres://127.0.0.1:1/x?password=secret",
            "postgres://127.0.0.1:1/x",
        ),
        (
            "host=127.0.0.1 port=1 user=u password=secret dbname=x",
            "postgres://u@127.0.0.1:1/x",
        ),
    ] {
        let started = Instant::now();
        let out = run(tlo()
            .arg("-c")
            .arg(&config)
            .env("TLO_TASK_STATE_STORE", "postgres")
            .env("TLO_DATABASE_URL", url)
            .arg("jobs"));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
        assert!(stderr.contains(named), "{url}: {stderr}");
        assert!(!stderr.contains("cret"), "the password leaked: {stderr}");
        // The cause (here refused, or no such host) follows tokio-postgres' own words.
        assert!(
            stderr.contains("error connecting to server: "),
            "the cause is given: {stderr}"
        );
        assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{url}: gave up after {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn submit_with_bad_args_or_delay_is_a_usage_error_that_stores_nothing() {
    let dir = scratch("submit-usage");
    let config = dir.join("tlo.toml");
    std::fs::write(&config, "[tasks.a]\ncommand = \"true\"\n").unwrap();
    let cli = |args: &[&str]| run(tlo().arg("-c").arg(&config).args(args));
    for (args, named) in [
        (&["submit", "a", "--args", "{bad"][..], "--args"),
        (&["submit", "a", "--delay", "2x"][..], "--delay"),
    ] {
        let out = cli(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let listed = cli(&["jobs"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        !text(&listed.stdout).contains(" a "),
        "nothing was stored: {}",
        text(&listed.stdout)
    );
}

#[test]
fn a_postgres_url_with_the_store_left_at_sqlite_is_refused_by_name() {
    let dir = scratch("sqlite-postgres-url");
    let config = dir.join("tlo.toml");
    std::fs::write(&config, "[tasks.a]\ncommand = \"true\"\n").unwrap();
    let out = run(tlo()
        .arg("-c")
        .arg(&config)
        .current_dir(&dir)
        .env("TLO_DATABASE_URL", "postgres://u:secret@127.0.0.1/x")
        .arg("jobs"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TLO_DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
    assert!(!dir.join("postgres:").exists(), "no file was created");
}

#[test]
fn submit_wait_on_a_terminal_draws_the_progress_a_shell_command_reports() {
    let dir = scratch("progress-bar");
    let config = dir.join("tlo.toml");
    std::fs::write(
        &config,
        "[settings]\npoll_interval_ms = 50\n\n[tasks.steps]\ncommand = \"\
         echo '::progress 40 halfway'; sleep 1; echo '::progress 100 all done'; echo plain\"\n",
    )
    .unwrap();
    let _run = start_run(&config);
    // `script` gives the submit a terminal, as a person at a shell has.
    let submit = format!(
        "{} -c {} submit steps --wait",
        env!("CARGO_BIN_EXE_tlo"),
        config.display()
    );
    let mut command = Command::new("script");
    for (key, _) in std::env::vars() {
        if key.starts_with("TLO_") {
            command.env_remove(key);
        }
    }
    let out = run(command.args(["-qec", &submit, "/dev/null"]));
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    assert!(
        screen.contains("[########............]  40.0% running halfway"),
        "{screen}"
    );
    assert!(
        screen.contains("[####################] 100.0% done all done"),
        "{screen}"
    );
    let id = screen
        .split_whitespace()
        .find(|word| word.len() == 36 && word.matches('-').count() == 4)
        .expect("the job id")
        .to_owned();
    let shown = text(&run(tlo().arg("-c").arg(&config).args(["show", &id])).stdout);
    assert!(shown.contains("progress:  100.0% all done"), "{shown}");
    assert!(
        shown.contains("plain"),
        "ordinary output is logged: {shown}"
    );
    assert!(
        !shown.contains("::progress"),
        "progress lines are not: {shown}"
    );
}
