//! `{name}` templates rendered from a job's JSON arguments: exclusivity keys, shell commands.

use serde_json::Value;
use tlo_core::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A dotted path into the arguments: `user.id` -> `["user", "id"]`.
    Field(Vec<String>),
}

/// A parsed template: literal text and `{name}` placeholders (`{user.id}` looks into nested
/// objects; `{{` and `}}` are literal braces).
///
/// ```
/// use serde_json::json;
/// let key = tlo::Template::parse("user-{user_id}").unwrap();
/// assert_eq!(key.render("digest", &json!({"user_id": 123})).unwrap(), "user-123");
/// let cmd = tlo::Template::parse("echo {msg}").unwrap();
/// assert_eq!(cmd.render_shell("echo", &json!({"msg": "a; b"})).unwrap(), "echo 'a; b'");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `source`; an unclosed `{`, a stray `}` or an empty `{}` is
    /// [`Error::InvalidTemplate`].
    pub fn parse(source: &str) -> Result<Template> {
        let invalid = |message: &str| Error::InvalidTemplate {
            template: source.to_owned(),
            message: message.to_owned(),
        };
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(invalid("stray `}` (write `}}` for a literal brace)")),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => return Err(invalid("`{` inside a placeholder")),
                            Some(c) => name.push(c),
                            None => return Err(invalid("unclosed `{`")),
                        }
                    }
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(invalid("empty placeholder `{}`"));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    let path: Vec<String> = name.split('.').map(str::to_owned).collect();
                    if path.iter().any(String::is_empty) {
                        return Err(invalid("empty segment in placeholder path"));
                    }
                    parts.push(Part::Field(path));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// The text it was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The placeholder names, in order (dotted paths joined with `.`).
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.parts.iter().filter_map(|part| match part {
            Part::Field(path) => Some(path.join(".")),
            Part::Text(_) => None,
        })
    }

    /// Renders with plain values: strings verbatim, other values as compact JSON.
    pub fn render(&self, task: &str, args: &Value) -> Result<String> {
        self.render_with(task, args, Ok)
    }

    /// Renders with every substituted value quoted for a POSIX shell.
    pub fn render_shell(&self, task: &str, args: &Value) -> Result<String> {
        self.render_with(task, args, |value| {
            shlex::try_quote(&value)
                .map(|quoted| quoted.into_owned())
                .map_err(|_| Error::InvalidTemplate {
                    template: self.source.clone(),
                    message: "an argument contains a NUL byte".into(),
                })
        })
    }

    fn render_with(
        &self,
        task: &str,
        args: &Value,
        escape: impl Fn(String) -> Result<String>,
    ) -> Result<String> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(path) => {
                    let value = path
                        .iter()
                        .try_fold(args, |value, key| value.as_object()?.get(key))
                        .ok_or_else(|| Error::MissingTemplateArgument {
                            task: task.to_owned(),
                            template: self.source.clone(),
                            missing: path.join("."),
                        })?;
                    let text = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    out.push_str(&escape(text)?);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_nested_paths_and_literal_braces() {
        let t = Template::parse("{{{user.id}}}-{n}-{flag}-{name}").unwrap();
        let args = json!({"user": {"id": 7}, "n": 1.5, "flag": true, "name": "x"});
        assert_eq!(t.render("t", &args).unwrap(), "{7}-1.5-true-x");
        assert_eq!(
            t.names().collect::<Vec<_>>(),
            ["user.id", "n", "flag", "name"]
        );
    }

    #[test]
    fn constant_template_renders_itself() {
        let t = Template::parse("rebuild_cache").unwrap();
        assert_eq!(t.render("t", &json!(null)).unwrap(), "rebuild_cache");
    }

    #[test]
    fn missing_argument_names_task_template_and_field() {
        let err = Template::parse("{user_id}")
            .unwrap()
            .render("digest", &json!({"user": 1}))
            .unwrap_err();
        match err {
            Error::MissingTemplateArgument {
                task,
                template,
                missing,
            } => assert_eq!(
                (task.as_str(), template.as_str(), missing.as_str()),
                ("digest", "{user_id}", "user_id")
            ),
            other => panic!("{other}"),
        }
        assert!(
            Template::parse("{a}")
                .unwrap()
                .render("t", &json!([1]))
                .is_err()
        );
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in ["{unclosed", "stray}", "{}", "{a.}", "{a{b}}"] {
            assert!(
                matches!(Template::parse(bad), Err(Error::InvalidTemplate { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn shell_rendering_quotes_values() {
        let t = Template::parse("echo {msg}").unwrap();
        let out = t
            .render_shell("t", &json!({"msg": "$(rm -rf /); `x` 'q'"}))
            .unwrap();
        assert_eq!(
            shlex::split(&out).unwrap(),
            ["echo", "$(rm -rf /); `x` 'q'"]
        );
        assert!(t.render_shell("t", &json!({"msg": "a\0b"})).is_err());
    }
}
