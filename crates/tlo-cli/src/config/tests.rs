//! Every config problem reported with its line; the example file parses.

use super::*;
use serde_json::json;

const FULL: &str = r#"
[settings]
concurrency = 8
tick_interval = 0.5
stop_behavior = "Drain"
queue_concurrency = { emails = 2, reports = 1 }
queues = ["emails", "reports"]

[tasks.backup]
command = "pg_dump {db} > /tmp/{db}.sql"
description = "Nightly dump"
warning = "Heavy on the database"
queue = "maintenance"
priority = -5
max_attempts = 3
backoff = "exponential"
retry_wait = "10s"
retry_wait_max = "5m"
timeout = "30m"
exclusive = "{db}"
cancellable = false
cron = "0 3 * * *"
timezone = "Europe/Kyiv"
misfire = "fire_once"
overlap = false
fire_on_start = true
args = { db = "main" }
env = { PGHOST = "localhost", PGPORT = 5432 }
workdir = "/var/backups"
shell = "bash"
metadata = { team = "data", tier = 1 }

[tasks.ping]
command = "echo ping"
every = "10s"
backoff = "fixed"
retry_wait = 3
"#;

fn parse(text: &str) -> Config {
    match Config::parse(text, None) {
        Ok(config) => config,
        Err(errors) => panic!("unexpected errors:\n{errors}"),
    }
}

/// The problems found in `text`, as `(line, message)`.
fn problems(text: &str) -> Vec<(usize, String)> {
    match Config::parse(text, None) {
        Ok(config) => panic!("expected errors, parsed {config:?}"),
        Err(errors) => errors
            .errors
            .into_iter()
            .map(|e| (e.line, e.message))
            .collect(),
    }
}

/// Asserts exactly one problem, on `line`, whose message contains `needle`.
#[track_caller]
fn one_problem(text: &str, line: usize, needle: &str) {
    let found = problems(text);
    assert_eq!(found.len(), 1, "expected one problem, found {found:#?}");
    assert_eq!(found[0].0, line, "wrong line for {found:#?}");
    assert!(
        found[0].1.contains(needle),
        "message {:?} does not contain {needle:?}",
        found[0].1
    );
}

#[test]
fn full_example_parses_into_options() {
    let config = parse(FULL);
    assert_eq!(
        config.settings,
        vec![
            ("concurrency".to_owned(), "8".to_owned(), 3),
            ("tick_interval".to_owned(), "0.5".to_owned(), 4),
            ("stop_behavior".to_owned(), "Drain".to_owned(), 5),
            (
                "queue_concurrency".to_owned(),
                "emails=2,reports=1".to_owned(),
                6
            ),
            ("queues".to_owned(), "emails,reports".to_owned(), 7),
        ]
    );
    assert!(config.settings_builder().is_ok());
    assert_eq!(config.tasks.len(), 2);

    let backup = &config.tasks[0];
    assert_eq!(backup.name, "backup");
    assert_eq!(backup.line, 9);
    assert_eq!(
        backup.command.template().source(),
        "pg_dump {db} > /tmp/{db}.sql"
    );
    let options = &backup.options;
    assert_eq!(options.description.as_deref(), Some("Nightly dump"));
    assert_eq!(options.warning.as_deref(), Some("Heavy on the database"));
    assert_eq!(options.queue.as_deref(), Some("maintenance"));
    assert_eq!(options.priority, -5);
    assert_eq!(options.max_attempts, 3);
    assert_eq!(
        options.backoff,
        Backoff::exponential(Duration::from_secs(10), Duration::from_secs(300))
    );
    assert_eq!(options.timeout, Some(Duration::from_secs(1800)));
    assert_eq!(options.exclusive.as_deref(), Some("{db}"));
    assert!(options.not_cancellable);
    assert!(options.schedule.is_some());
    assert_eq!(options.schedule_args, Some(json!({ "db": "main" })));
    assert_eq!(options.metadata.get("team"), Some(&json!("data")));
    assert_eq!(options.metadata.get("tier"), Some(&json!(1)));
    assert_eq!(
        backup.schedule_description.as_deref(),
        Some("cron `0 3 * * *` (Europe/Kyiv)")
    );

    let ping = &config.tasks[1];
    assert_eq!(ping.name, "ping");
    assert_eq!(ping.line, 33);
    assert_eq!(ping.options.backoff, Backoff::fixed(Duration::from_secs(3)));
    assert_eq!(ping.options.max_attempts, TaskOptions::new().max_attempts);
    assert!(!ping.options.not_cancellable);
    assert!(ping.options.schedule.is_some());
    assert_eq!(ping.schedule_description.as_deref(), Some("every 10s"));
    assert_eq!(ping.options.schedule_args, None);
}

#[test]
fn defaults_when_only_a_command_is_given() {
    let config = parse("[tasks.a]\ncommand = \"echo a\"\n");
    let task = &config.tasks[0];
    assert_eq!(task.options.backoff, Backoff::default());
    assert!(task.options.schedule.is_none());
    assert!(task.schedule_description.is_none());
    assert!(task.options.queue.is_none());
    assert!(config.settings.is_empty());
}

#[test]
fn example_file_parses() {
    let config = parse(include_str!("../../../../examples/tlo.toml"));
    let names: Vec<&str> = config.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["heartbeat", "nightly_report", "sync_account", "hello"]
    );
    assert_eq!(
        config.tasks[0].schedule_description.as_deref(),
        Some("every 10s")
    );
    assert!(config.tasks[1].options.schedule.is_some());
    assert!(config.tasks[2].options.exclusive.is_some());
    assert!(config.settings_builder().is_ok());
}

#[test]
fn registers_every_task() {
    let config = parse(FULL);
    let tlo = Tlo::builder()
        .build_with_env(|_| None)
        .expect("default orchestrator");
    config.register(&tlo).expect("register");
    assert_eq!(tlo.registry().names(), ["backup", "ping"]);
    let backup = tlo.registry().require("backup").expect("backup registered");
    assert_eq!(backup.kind(), "shell");
    assert_eq!(backup.command(), Some("pg_dump {db} > /tmp/{db}.sql"));
}

#[test]
fn syntax_error_has_its_line_and_stops() {
    let text = "[settings]\nconcurrency = 8\n\n[tasks.a]\ncommand = \nbogus = 1\n";
    let errors = Config::parse(text, Some(Path::new("tlo.toml"))).unwrap_err();
    assert_eq!(errors.errors.len(), 1, "{errors}");
    assert_eq!(errors.errors[0].line, 5);
    assert!(
        errors.errors[0].message.starts_with("TOML syntax error"),
        "{errors}"
    );
    assert!(errors.to_string().starts_with("tlo.toml:5:"), "{errors}");
}

#[test]
fn duplicate_task_is_a_syntax_error_at_the_second_table() {
    one_problem(
        "[tasks.a]\ncommand = \"x\"\n[tasks.a]\ncommand = \"y\"\n",
        3,
        "duplicate key",
    );
}

#[test]
fn unknown_top_level_table() {
    one_problem(
        "[setings]\nconcurrency = 1\n",
        1,
        "unknown top-level table `setings`",
    );
    one_problem("title = \"x\"\n", 1, "unknown top-level table `title`");
}

#[test]
fn unknown_setting_key() {
    one_problem(
        "[settings]\nconcurrency = 2\nconcurency = 2\n",
        3,
        "unknown key `concurency` in [settings]",
    );
}

#[test]
fn invalid_setting_value_reports_the_settings_message() {
    let text = "[settings]\n\nconcurrency = \"lots\"\n";
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, 3);
    assert!(found[0].1.contains("lots"), "{found:?}");
    one_problem(
        "[settings]\nconcurrency = 1979-05-27\n",
        2,
        "found a datetime",
    );
}

#[test]
fn unknown_task_key_with_column_and_file_name() {
    let text = "[tasks.backup]\ncommand = \"echo\"\n    comand = \"pg_dump\"\n";
    let errors = Config::parse(text, Some(Path::new("tlo.toml"))).unwrap_err();
    assert_eq!(
        errors.errors,
        vec![ConfigError {
            line: 3,
            column: 5,
            message: format!(
                "unknown key `comand` in [tasks.backup] (expected one of {})",
                TASK_KEYS.join(", ")
            ),
        }]
    );
    assert!(
        errors
            .to_string()
            .starts_with("tlo.toml:3:5: unknown key `comand` in [tasks.backup] (expected one of command, description,"),
        "{errors}"
    );
}

#[test]
fn wrong_value_types() {
    let text =
        "[tasks.a]\ncommand = \"echo\"\npriority = \"high\"\ncancellable = 1\nargs = \"x\"\n";
    let found = problems(text);
    assert_eq!(
        found,
        vec![
            (
                3,
                "`priority` in [tasks.a] must be an integer, found a string".to_owned()
            ),
            (
                4,
                "`cancellable` in [tasks.a] must be a boolean (true or false), found an integer"
                    .to_owned()
            ),
            (
                5,
                "`args` in [tasks.a] must be a table, found a string".to_owned()
            ),
        ]
    );
    one_problem("[tasks]\na = \"echo\"\n", 2, "must be a table");
    one_problem("tasks = 3\n", 1, "`tasks` must be a table");
    one_problem(
        "[tasks.a]\ncommand = [\"echo\"]\n",
        2,
        "`command` in [tasks.a] must be a string",
    );
}

#[test]
fn missing_command_is_reported_at_the_task_header() {
    one_problem(
        "\n[tasks.backup]\ndescription = \"x\"\n",
        2,
        "[tasks.backup] has no `command`",
    );
    one_problem("[tasks.a]\ncommand = \"  \"\n", 2, "must not be empty");
}

#[test]
fn empty_task_name() {
    one_problem(
        "[tasks.\"\"]\ncommand = \"echo\"\n",
        1,
        "task name must not be empty",
    );
}

#[test]
fn invalid_templates() {
    one_problem(
        "[tasks.a]\ncommand = \"echo {unclosed\"\n",
        2,
        "`command` in [tasks.a]",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nexclusive = \"{}\"\n",
        3,
        "`exclusive` in [tasks.a]",
    );
}

#[test]
fn invalid_schedules() {
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\ncron = \"61 * * * *\"\n",
        3,
        "`cron` in [tasks.a]",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\ncron = \"0 3 * *\"\n",
        3,
        "expected 5 fields",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nevery = \"soon\"\n",
        3,
        "`every` in [tasks.a]",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\ntimeout = \"-\"\n",
        3,
        "`timeout` in [tasks.a]",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\ncron = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"\n",
        4,
        "`timezone` in [tasks.a]",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nevery = \"1m\"\nmisfire = \"sometimes\"\n",
        4,
        "`misfire` in [tasks.a]",
    );
}

#[test]
fn every_with_cron_and_timezone_without_cron() {
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nevery = \"1h\"\ncron = \"0 3 * * *\"\n",
        4,
        "mutually exclusive",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nevery = \"1h\"\ntimezone = \"Europe/Kyiv\"\n",
        4,
        "applies only to a `cron` schedule",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nmisfire = \"skip\"\n",
        3,
        "needs a schedule",
    );
}

#[test]
fn placeholders_must_be_keys_of_args() {
    one_problem(
        "[tasks.a]\ncommand = \"pg_dump {db} {table}\"\nargs = { db = \"main\" }\n",
        2,
        "{table}",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nexclusive = \"{user}\"\nargs = { db = \"main\" }\n",
        3,
        "{user}",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo {db}\"\nevery = \"1m\"\n",
        2,
        "scheduled without `args`",
    );
    // Without args and without a schedule, the arguments come with each submit.
    parse("[tasks.a]\ncommand = \"echo {db}\"\nexclusive = \"{db}\"\n");
}

#[test]
fn attempts_and_retries() {
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nmax_attempts = 0\n",
        3,
        "at least 1",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nbackoff = \"linear\"\n",
        3,
        "\"fixed\" or \"exponential\"",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nbackoff = \"fixed\"\nretry_wait_max = \"1m\"\n",
        4,
        "only to backoff = \"exponential\"",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\nretry_wait = \"10m\"\nretry_wait_max = \"1m\"\n",
        4,
        "shorter than",
    );
    one_problem(
        "[tasks.a]\ncommand = \"echo\"\npriority = 3000000000\n",
        3,
        "out of range",
    );
    let config = parse("[tasks.a]\ncommand = \"echo\"\npriority = -10\n");
    assert_eq!(config.tasks[0].options.priority, -10);
}

#[test]
fn several_problems_are_reported_together_in_file_order() {
    let text = r#"[settings]
concurrency = "lots"
colour = "blue"

[tasks.backup]
comand = "pg_dump main"

[tasks.report]
command = "echo {period}"
every = "1h"
cron = "0 3 * * *"
max_attempts = 0
args = { day = "today" }

[extra]
"#;
    let found: Vec<usize> = problems(text).into_iter().map(|(line, _)| line).collect();
    assert_eq!(found, [2, 3, 5, 6, 9, 11, 12, 15]);
}

#[test]
fn load_reports_every_problem_with_the_file_name() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid.toml");
    let errors = Config::load(&path).unwrap_err();
    let lines: Vec<usize> = errors.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 5, 6, 9, 11]);
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), 5, "{shown}");
    for line in shown.lines() {
        assert!(line.starts_with(&format!("{}:", path.display())), "{line}");
    }
    assert!(
        shown.contains("invalid.toml:6:1: unknown key `comand`"),
        "{shown}"
    );
}

#[test]
fn unreadable_file_is_one_error_naming_the_path() {
    let path = Path::new("/nonexistent/dir/tlo.toml");
    let errors = Config::load(path).unwrap_err();
    assert_eq!(errors.errors.len(), 1);
    assert_eq!(errors.errors[0].line, 0);
    assert!(
        errors.to_string().contains("/nonexistent/dir/tlo.toml"),
        "{errors}"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "[tasks.a]\ncommand = \"echo\"\nenv = { \"é\" = \"x\", V = [1] }\n";
    let errors = Config::parse(text, None).unwrap_err();
    assert_eq!(errors.errors.len(), 1, "{errors}");
    assert_eq!(
        (errors.errors[0].line, errors.errors[0].column),
        (3, 24),
        "{errors}"
    );
}
