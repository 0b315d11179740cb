//! The checker behind [`Config`](super::Config): walks the parsed document, collecting every
//! problem with its line and column; shared helpers for the task, workflow and process tables.

use super::*;

pub(super) type Key<'i> = Spanned<Cow<'i, str>>;
pub(super) type Item<'i> = Spanned<DeValue<'i>>;

/// The entries of a table in file order (the parsed table is sorted by key).
pub(super) fn entries<'a, 'i>(table: &'a DeTable<'i>) -> Vec<(&'a Key<'i>, &'a Item<'i>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

pub(super) fn key_str<'a>(key: &'a Key<'_>) -> &'a str {
    key.get_ref()
}

/// `a`/`an` and the TOML type name of a value, for messages.
pub(super) fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A table key as it would be written in a header: bare when possible, quoted otherwise.
pub(super) fn header_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// The argument names a template's `{name}` placeholders read (the first segment of a dotted
/// path such as `{user.id}`), in order, without duplicates.
pub(super) fn placeholders(template: &Template) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in template.names() {
        let root = name.split('.').next().unwrap_or_default();
        if !names.iter().any(|n| n == root) {
            names.push(root.to_owned());
        }
    }
    names
}

/// The short setting keys (`concurrency` for `TLO_CONCURRENCY`), for messages.
pub(super) fn setting_keys() -> Vec<String> {
    Settings::VARIABLES
        .iter()
        .map(|(name, _, _)| name.trim_start_matches("TLO_").to_ascii_lowercase())
        .collect()
}

/// Whether `key` names a setting (short or `TLO_*` form, any case), as `SettingsBuilder::set`
/// accepts it.
pub(super) fn is_setting_key(key: &str) -> bool {
    let upper = key.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("TLO_").unwrap_or(&upper);
    Settings::VARIABLES
        .iter()
        .any(|(name, _, _)| name.strip_prefix("TLO_") == Some(short))
}

pub(super) fn integer_value(value: &DeValue<'_>) -> Option<i64> {
    match value {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
}

pub(super) fn float_value(value: &DeValue<'_>) -> Option<f64> {
    match value {
        DeValue::Float(f) => f.as_str().parse().ok(),
        _ => None,
    }
}

/// The string form of a scalar (string, integer, float or boolean).
pub(super) fn scalar_text(value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(_) => integer_value(value).map(|i| i.to_string()),
        DeValue::Float(_) => float_value(value).map(|f| f.to_string()),
        DeValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Walks the document, collecting problems with their positions.
pub(super) struct Checker<'t> {
    pub(super) text: &'t str,
    pub(super) line_starts: Vec<usize>,
    pub(super) errors: Vec<ConfigError>,
}

/// A known key of a task table, its key and its value.
pub(super) type Field<'a, 'i> = (&'static str, &'a Key<'i>, &'a Item<'i>);

/// What a task's fields say about its schedule, before the schedule is built.
pub(super) struct ScheduleParts<'a, 'i> {
    pub(super) every: Option<&'a Item<'i>>,
    pub(super) cron: Option<&'a Item<'i>>,
    pub(super) timezone: Option<&'a Item<'i>>,
    pub(super) misfire: Option<&'a Item<'i>>,
    pub(super) overlap: Option<&'a Item<'i>>,
    pub(super) fire_on_start: Option<&'a Item<'i>>,
}

impl<'t> Checker<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Checker {
            text,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }

    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            line,
            column,
            message: message.into(),
        });
    }

    pub(super) fn into_errors(mut self, path: String) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors {
            path,
            errors: self.errors,
        }
    }

    pub(super) fn wrong_type(&mut self, item: &Item<'_>, what: &str, expected: &str) {
        let found = type_name(item.get_ref());
        self.error(
            item.span(),
            format!("{what} must be {expected}, found {found}"),
        );
    }

    pub(super) fn table<'a, 'i>(
        &mut self,
        item: &'a Item<'i>,
        what: &str,
    ) -> Option<&'a DeTable<'i>> {
        match item.get_ref() {
            DeValue::Table(table) => Some(table),
            _ => {
                self.wrong_type(item, what, "a table");
                None
            }
        }
    }

    pub(super) fn string<'a>(&mut self, item: &'a Item<'_>, what: &str) -> Option<&'a str> {
        match item.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(item, what, "a string");
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, item: &Item<'_>, what: &str) -> Option<bool> {
        match item.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(item, what, "a boolean (true or false)");
                None
            }
        }
    }

    pub(super) fn integer(&mut self, item: &Item<'_>, what: &str) -> Option<i64> {
        match item.get_ref() {
            DeValue::Integer(_) => {
                let value = integer_value(item.get_ref());
                if value.is_none() {
                    self.error(item.span(), format!("{what} is out of range"));
                }
                value
            }
            _ => {
                self.wrong_type(item, what, "an integer");
                None
            }
        }
    }

    /// A duration: a string such as `"30s"`, `"5m"`, `"2h30m"`, or a number of seconds.
    pub(super) fn duration(&mut self, item: &Item<'_>, what: &str) -> Option<Duration> {
        let expected = "a duration such as \"30s\", \"5m\", \"1h\" or a number of seconds";
        match item.get_ref() {
            DeValue::String(s) => match Schedule::parse_interval(s) {
                Ok(duration) => Some(duration),
                Err(err) => {
                    self.error(item.span(), format!("{what}: {err}"));
                    None
                }
            },
            DeValue::Integer(_) => match integer_value(item.get_ref()) {
                Some(secs) if secs >= 0 => Some(Duration::from_secs(secs.unsigned_abs())),
                _ => {
                    self.error(
                        item.span(),
                        format!("{what} must be {expected}, not negative"),
                    );
                    None
                }
            },
            DeValue::Float(_) => match float_value(item.get_ref()) {
                Some(secs) if secs.is_finite() && secs >= 0.0 => {
                    Some(Duration::from_secs_f64(secs))
                }
                _ => {
                    self.error(item.span(), format!("{what} must be {expected}"));
                    None
                }
            },
            _ => {
                self.wrong_type(item, what, expected);
                None
            }
        }
    }

    /// A TOML value as JSON (datetimes become strings).
    pub(super) fn json(&mut self, item: &Item<'_>, what: &str) -> Option<Value> {
        match item.get_ref() {
            DeValue::String(s) => Some(Value::String(s.to_string())),
            DeValue::Integer(_) => self.integer(item, what).map(Value::from),
            DeValue::Float(_) => {
                match float_value(item.get_ref()).and_then(serde_json::Number::from_f64) {
                    Some(number) => Some(Value::Number(number)),
                    None => {
                        self.error(
                            item.span(),
                            format!("{what} must be a finite number (JSON has no nan or inf)"),
                        );
                        None
                    }
                }
            }
            DeValue::Boolean(b) => Some(Value::Bool(*b)),
            DeValue::Datetime(dt) => Some(Value::String(dt.to_string())),
            DeValue::Array(array) => {
                let mut values = Vec::with_capacity(array.len());
                let mut ok = true;
                for element in array.iter() {
                    match self.json(element, what) {
                        Some(value) => values.push(value),
                        None => ok = false,
                    }
                }
                ok.then_some(Value::Array(values))
            }
            DeValue::Table(table) => self.json_object(table, what).map(Value::Object),
        }
    }

    pub(super) fn json_object(
        &mut self,
        table: &DeTable<'_>,
        what: &str,
    ) -> Option<Map<String, Value>> {
        let mut map = Map::new();
        let mut ok = true;
        for (key, value) in entries(table) {
            let key = key_str(key);
            match self.json(value, &format!("{what}.{}", header_key(key))) {
                Some(value) => {
                    map.insert(key.to_owned(), value);
                }
                None => ok = false,
            }
        }
        ok.then_some(map)
    }

    /// The string form of a setting value, as `SettingsBuilder::set` takes it.
    pub(super) fn setting_text(&mut self, item: &Item<'_>, what: &str) -> Option<String> {
        let expected = "a string, number or boolean";
        match item.get_ref() {
            DeValue::Array(array) => {
                let mut parts = Vec::with_capacity(array.len());
                for element in array.iter() {
                    match scalar_text(element.get_ref()) {
                        Some(text) => parts.push(text),
                        None => {
                            self.wrong_type(element, &format!("each element of {what}"), expected);
                            return None;
                        }
                    }
                }
                Some(parts.join(","))
            }
            DeValue::Table(table) => {
                let mut parts = Vec::with_capacity(table.len());
                for (key, value) in entries(table) {
                    let key = key_str(key);
                    match scalar_text(value.get_ref()) {
                        Some(text) => parts.push(format!("{key}={text}")),
                        None => {
                            self.wrong_type(
                                value,
                                &format!("{what}.{}", header_key(key)),
                                expected,
                            );
                            return None;
                        }
                    }
                }
                Some(parts.join(","))
            }
            other => match scalar_text(other) {
                Some(text) => Some(text),
                None => {
                    self.wrong_type(item, what, "a string, number, boolean, array or table");
                    None
                }
            },
        }
    }

    pub(super) fn settings(
        &mut self,
        table: &DeTable<'_>,
        settings: &mut Vec<(String, String, usize)>,
    ) {
        for (key, value) in entries(table) {
            let name = key_str(key);
            let what = format!("`{name}` in [settings]");
            let Some(text) = self.setting_text(value, &what) else {
                continue;
            };
            match SettingsBuilder::default().set(name, &text) {
                Ok(_) => settings.push((name.to_owned(), text, self.line(&key.span()))),
                Err(_) if !is_setting_key(name) => {
                    self.error(
                        key.span(),
                        format!(
                            "unknown key `{name}` in [settings] (expected one of {}, or their TLO_* variable names)",
                            setting_keys().join(", ")
                        ),
                    );
                }
                Err(err) => self.error(value.span(), err.to_string()),
            }
        }
    }
}
