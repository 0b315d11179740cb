//! `[tasks.NAME]` tables: shell commands with their options and schedules.

use super::*;

impl Checker<'_> {
    pub(super) fn task(&mut self, name_key: &Key<'_>, item: &Item<'_>) -> Option<TaskConfig> {
        let name = key_str(name_key);
        let header = format!("[tasks.{}]", header_key(name));
        let mut valid = true;
        if name.trim().is_empty() {
            self.error(name_key.span(), "a task name must not be empty");
            valid = false;
        }
        let DeValue::Table(table) = item.get_ref() else {
            self.wrong_type(
                item,
                &format!("task `{name}`"),
                &format!("a table (write it as {header})"),
            );
            return None;
        };

        let mut fields: Vec<Field<'_, '_>> = Vec::new();
        for (key, value) in entries(table) {
            let key_name = key_str(key);
            match TASK_KEYS.iter().find(|k| **k == key_name) {
                Some(known) => fields.push((known, key, value)),
                None => {
                    self.error(
                        key.span(),
                        format!(
                            "unknown key `{key_name}` in {header} (expected one of {})",
                            TASK_KEYS.join(", ")
                        ),
                    );
                    valid = false;
                }
            }
        }
        let field = |name: &str| fields.iter().find(|(k, _, _)| *k == name).map(|f| f.2);
        let what = |key: &str| format!("`{key}` in {header}");
        let errors_before = self.errors.len();

        let mut options = TaskOptions::new();
        if let Some(text) = field("description").and_then(|v| self.string(v, &what("description")))
        {
            options = options.description(text);
        }
        if let Some(text) = field("warning").and_then(|v| self.string(v, &what("warning"))) {
            options = options.warning(text);
        }
        if let Some(text) = field("queue").and_then(|v| self.string(v, &what("queue"))) {
            options = options.queue(text);
        }
        if let Some(priority) = field("priority").and_then(|v| self.integer(v, &what("priority"))) {
            match i32::try_from(priority) {
                Ok(priority) => options = options.priority(priority),
                Err(_) => self.error(
                    field("priority").map_or(0..0, |v| v.span()),
                    format!(
                        "{} is out of range ({}..={})",
                        what("priority"),
                        i32::MIN,
                        i32::MAX
                    ),
                ),
            }
        }
        let attempts = field("max_attempts")
            .and_then(|item| Some((item, self.integer(item, &what("max_attempts"))?)));
        if let Some((item, attempts)) = attempts {
            match u32::try_from(attempts) {
                Ok(attempts) if attempts >= 1 => options = options.max_attempts(attempts),
                _ => self.error(
                    item.span(),
                    format!(
                        "{} must be at least 1 (it counts the first attempt), found {attempts}",
                        what("max_attempts")
                    ),
                ),
            }
        }

        // Retries.
        let fixed = match field("backoff") {
            None => Some(false),
            Some(item) => match self.string(item, &what("backoff")) {
                Some("fixed") => Some(true),
                Some("exponential") => Some(false),
                Some(other) => {
                    self.error(
                        item.span(),
                        format!(
                            "{} must be \"fixed\" or \"exponential\", found \"{other}\"",
                            what("backoff")
                        ),
                    );
                    None
                }
                None => None,
            },
        };
        let wait = match field("retry_wait") {
            Some(item) => self.duration(item, &what("retry_wait")),
            None => Some(Duration::from_secs(1)),
        };
        let wait_max = match field("retry_wait_max") {
            Some(item) => self.duration(item, &what("retry_wait_max")),
            None => Some(Duration::from_secs(300)),
        };
        match (fixed, wait, wait_max) {
            (Some(true), Some(wait), _) => {
                if let Some(item) = field("retry_wait_max") {
                    self.error(
                        item.span(),
                        format!(
                            "{} applies only to backoff = \"exponential\"",
                            what("retry_wait_max")
                        ),
                    );
                }
                options = options.backoff(Backoff::fixed(wait));
            }
            (Some(false), Some(wait), Some(max)) => {
                if max < wait {
                    let span = field("retry_wait_max")
                        .or(field("retry_wait"))
                        .map_or(name_key.span(), |v| v.span());
                    self.error(
                        span,
                        format!(
                            "{} ({max:?}) is shorter than `retry_wait` ({wait:?})",
                            what("retry_wait_max")
                        ),
                    );
                } else {
                    options = options.backoff(Backoff::exponential(wait, max));
                }
            }
            _ => {}
        }

        if let Some(item) = field("timeout") {
            match self.duration(item, &what("timeout")) {
                Some(timeout) if timeout.is_zero() => {
                    self.error(
                        item.span(),
                        format!("{} must be more than zero", what("timeout")),
                    );
                }
                Some(timeout) => options = options.timeout(timeout),
                None => {}
            }
        }
        if let Some(cancellable) =
            field("cancellable").and_then(|v| self.boolean(v, &what("cancellable")))
        {
            options = options.cancellable(cancellable);
        }

        // Arguments of scheduled runs, environment, metadata.
        let args = match field("args") {
            Some(item) => match self.table(item, &what("args")) {
                Some(table) => self.json_object(table, &what("args")),
                None => None,
            },
            None => None,
        };
        let mut env = Vec::new();
        if let Some(table) = field("env").and_then(|v| self.table(v, &what("env"))) {
            for (key, value) in entries(table) {
                let key = key_str(key);
                match scalar_text(value.get_ref()) {
                    Some(text) => env.push((key.to_owned(), text)),
                    None => self.wrong_type(
                        value,
                        &format!("`env.{}` in {header}", header_key(key)),
                        "a string, number or boolean",
                    ),
                }
            }
        }
        let metadata = field("metadata")
            .and_then(|v| self.table(v, &what("metadata")))
            .and_then(|table| self.json_object(table, &what("metadata")));
        for (key, value) in metadata.unwrap_or_default() {
            options = options.metadata(key, value);
        }

        // The command and the exclusivity key.
        let command = match field("command") {
            None => {
                self.error(
                    name_key.span(),
                    format!("{header} has no `command` (required: the shell command to run)"),
                );
                None
            }
            Some(item) => match self.string(item, &what("command")) {
                Some(text) if text.trim().is_empty() => {
                    self.error(
                        item.span(),
                        format!("{} must not be empty", what("command")),
                    );
                    None
                }
                Some(text) => match ShellCommand::new(text) {
                    Ok(command) => Some(command),
                    Err(err) => {
                        self.error(item.span(), format!("{}: {err}", what("command")));
                        None
                    }
                },
                None => None,
            },
        };
        let exclusive = match field("exclusive") {
            Some(item) => match self.string(item, &what("exclusive")) {
                Some(text) => match Template::parse(text) {
                    Ok(template) => {
                        options = options.exclusive(text);
                        Some(template)
                    }
                    Err(err) => {
                        self.error(item.span(), format!("{}: {err}", what("exclusive")));
                        None
                    }
                },
                None => None,
            },
            None => None,
        };
        let command = command.map(|mut command| {
            if let Some(shell) = field("shell").and_then(|v| self.string(v, &what("shell"))) {
                command = command.shell(shell);
            }
            if let Some(dir) = field("workdir").and_then(|v| self.string(v, &what("workdir"))) {
                command = command.workdir(dir);
            }
            for (key, value) in &env {
                command = command.env(key.as_str(), value.as_str());
            }
            command
        });

        // The schedule.
        let scheduled = field("every").is_some() || field("cron").is_some();
        let schedule = self.schedule(&fields, &header);
        let mut schedule_description = None;
        if let Some((schedule, description)) = schedule {
            options = options.schedule(schedule);
            schedule_description = Some(description);
        }

        // Placeholders must be arguments of scheduled runs.
        let templates = [
            ("command", command.as_ref().map(|c| c.template())),
            ("exclusive", exclusive.as_ref()),
        ];
        for (key, template) in templates {
            let (Some(template), Some(item)) = (template, field(key)) else {
                continue;
            };
            let names = placeholders(template);
            match &args {
                Some(args) => {
                    let missing: Vec<&String> = names
                        .iter()
                        .filter(|n| !args.contains_key(n.as_str()))
                        .collect();
                    if !missing.is_empty() {
                        let known: Vec<&str> = args.keys().map(String::as_str).collect();
                        let known = if known.is_empty() {
                            "`args` is empty".to_owned()
                        } else {
                            format!("`args` has {}", known.join(", "))
                        };
                        let missing: Vec<String> =
                            missing.iter().map(|n| format!("{{{n}}}")).collect();
                        self.error(
                            item.span(),
                            format!(
                                "{} names {} but `args` has no such key ({known})",
                                what(key),
                                missing.join(", ")
                            ),
                        );
                    }
                }
                None if scheduled && field("args").is_none() && !names.is_empty() => {
                    let example: Vec<String> = names.iter().map(|n| format!("{n} = ...")).collect();
                    self.error(
                        item.span(),
                        format!(
                            "{} names {} but the task is scheduled without `args`; add args = {{ {} }}",
                            what(key),
                            names.iter().map(|n| format!("{{{n}}}")).collect::<Vec<_>>().join(", "),
                            example.join(", ")
                        ),
                    );
                }
                None => {}
            }
        }
        if let Some(args) = args {
            options = options.schedule_args(Value::Object(args));
        }

        if !valid || self.errors.len() > errors_before {
            return None;
        }
        Some(TaskConfig {
            name: name.to_owned(),
            line: self.line(&name_key.span()),
            command: command?,
            options,
            schedule_description,
        })
    }

    /// Builds the schedule of a task and its description; `None` when the task has none or a
    /// part is invalid (the problem is recorded).
    pub(super) fn schedule(
        &mut self,
        fields: &[Field<'_, '_>],
        header: &str,
    ) -> Option<(Schedule, String)> {
        let what = |key: &str| format!("`{key}` in {header}");
        let find = |key: &str| fields.iter().find(|(k, _, _)| *k == key);
        let key_span = |key: &str| find(key).map_or(0..0, |f| f.1.span());
        let parts = ScheduleParts {
            every: find("every").map(|f| f.2),
            cron: find("cron").map(|f| f.2),
            timezone: find("timezone").map(|f| f.2),
            misfire: find("misfire").map(|f| f.2),
            overlap: find("overlap").map(|f| f.2),
            fire_on_start: find("fire_on_start").map(|f| f.2),
        };
        let mut ok = true;
        if parts.every.is_some() && parts.cron.is_some() {
            let later = if key_span("every").start > key_span("cron").start {
                "every"
            } else {
                "cron"
            };
            self.error(
                key_span(later),
                format!("`every` and `cron` in {header} are mutually exclusive: keep one"),
            );
            ok = false;
        }
        if parts.timezone.is_some() && parts.cron.is_none() {
            self.error(
                key_span("timezone"),
                format!("{} applies only to a `cron` schedule", what("timezone")),
            );
            ok = false;
        }
        if parts.every.is_none() && parts.cron.is_none() {
            for key in ["misfire", "overlap", "fire_on_start"] {
                if find(key).is_some() {
                    self.error(
                        key_span(key),
                        format!("{} needs a schedule (`every` or `cron`)", what(key)),
                    );
                }
            }
            return None;
        }

        let misfire = match parts.misfire {
            Some(item) => match self.string(item, &what("misfire")) {
                Some(text) => match text.parse::<MisfirePolicy>() {
                    Ok(policy) => Some(policy),
                    Err(err) => {
                        self.error(item.span(), format!("{}: {err}", what("misfire")));
                        ok = false;
                        None
                    }
                },
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let mut flag = |item: Option<&Item<'_>>, key: &str| match item {
            Some(item) => {
                let value = self.boolean(item, &what(key));
                ok &= value.is_some();
                value
            }
            None => None,
        };
        let overlap = flag(parts.overlap, "overlap");
        let fire_on_start = flag(parts.fire_on_start, "fire_on_start");

        let timezone = match parts.timezone {
            Some(item) => match self.string(item, &what("timezone")) {
                Some(tz) => match Schedule::cron_in("0 0 * * *", tz) {
                    Ok(_) => Some(tz),
                    Err(err) => {
                        // The pattern is a stand-in: show only what is wrong with the zone.
                        let message = match err {
                            tlo::Error::InvalidSchedule { message, .. } => message,
                            other => other.to_string(),
                        };
                        self.error(item.span(), format!("{}: {message}", what("timezone")));
                        ok = false;
                        None
                    }
                },
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };

        let built = if let Some(item) = parts.every {
            match self.duration(item, &what("every")) {
                Some(interval) => match Schedule::every(interval) {
                    Ok(schedule) => {
                        let text = match item.get_ref() {
                            DeValue::String(s) => s.to_string(),
                            _ => format!("{}s", interval.as_secs_f64()),
                        };
                        Some((schedule, format!("every {text}")))
                    }
                    Err(err) => {
                        self.error(item.span(), format!("{}: {err}", what("every")));
                        None
                    }
                },
                None => None,
            }
        } else if let Some(item) = parts.cron {
            match self.string(item, &what("cron")) {
                Some(pattern) => {
                    let schedule = match timezone {
                        Some(tz) => Schedule::cron_in(pattern, tz),
                        None => Schedule::cron(pattern),
                    };
                    match schedule {
                        Ok(schedule) => {
                            let description = schedule.describe();
                            Some((schedule, description))
                        }
                        Err(err) => {
                            self.error(item.span(), format!("{}: {err}", what("cron")));
                            None
                        }
                    }
                }
                None => None,
            }
        } else {
            None
        };

        let (mut schedule, description) = built?;
        if !ok {
            return None;
        }
        if let Some(policy) = misfire {
            schedule = schedule.misfire(policy);
        }
        if let Some(overlap) = overlap {
            schedule = schedule.allow_overlap(overlap);
        }
        if let Some(fire_on_start) = fire_on_start {
            schedule = schedule.fire_on_start(fire_on_start);
        }
        Some((schedule, description))
    }
}
