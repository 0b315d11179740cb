//! Connections: a pool for queries, errors that name the server without its password.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tlo_core::{Error, Result};
use tokio_postgres::NoTls;

pub(crate) fn pg_error(err: impl std::fmt::Display) -> Error {
    Error::store(format!("postgres: {err}"))
}

/// A driver error with the server's own message: tokio-postgres shows a refused statement only
/// as "db error", and keeps what the server said (and where) in its source.
pub(crate) fn db_error(err: tokio_postgres::Error) -> Error {
    match err.as_db_error() {
        Some(db) => {
            let mut text = format!("postgres: {} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(": {detail}"));
            }
            Error::store(text)
        }
        None => pg_error(err),
    }
}

/// A connection string fit to show: the password left out of every form tokio-postgres reads.
/// `postgres://user:secret@host/db` -> `postgres://user@host/db`; a `password` parameter
/// (`?password=secret`, `password=secret host=h`) keeps its name and loses its value (`***`).
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (address, query) = match rest.split_once('?') {
                Some((address, query)) => (address, Some(query)),
                None => (rest, None),
            };
            // The user information ends at the last `@`: a password may hold one unencoded.
            let address = match address.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split(':').next().unwrap_or(user);
                    format!("{user}@{host}")
                }
                None => address.to_owned(),
            };
            let query = query.map(|query| {
                let pairs: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some(("password", _)) => "password=***".to_owned(),
                        _ => pair.to_owned(),
                    })
                    .collect();
                format!("?{}", pairs.join("&"))
            });
            format!("{scheme}://{address}{}", query.unwrap_or_default())
        }
        None => redact_key_values(url),
    }
}

/// `host=h password=secret` -> `host=h password=***`, quoted values (`'a b'`) included.
fn redact_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let after_key = from["password".len()..].trim_start();
        let starts_a_key = before.is_empty() || before.ends_with(char::is_whitespace);
        let Some(value) = after_key.strip_prefix('=').filter(|_| starts_a_key) else {
            out.push_str("password");
            rest = &from["password".len()..];
            continue;
        };
        let value = value.trim_start();
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote; `\'` inside does not close it.
            let mut chars = quoted.char_indices();
            let mut close = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => {
                        close = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + close
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str("password=***");
        rest = &value[end.min(value.len())..];
    }
    out.push_str(rest);
    out
}

/// A valid schema identifier: letters, digits and `_`, not starting with a digit.
pub(crate) fn check_schema(schema: &str) -> Result<()> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidSetting {
            name: "postgres schema".into(),
            value: schema.into(),
            expected: "letters, digits and _, not starting with a digit, at most 63".into(),
        })
    }
}

/// How long a connection attempt may take unless the URL says (`connect_timeout`): a server
/// that drops packets is reported after this, not after the operating system gives up (minutes).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection settings of `url`, with [`CONNECT_TIMEOUT`] unless it sets its own.
pub(crate) fn config(url: &str) -> Result<tokio_postgres::Config> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|err| pg_error(format!("invalid database URL {}: {err}", redact(url))))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

pub(crate) fn pool(mut config: tokio_postgres::Config, size: usize) -> Result<Pool> {
    // tlo's statements are prepared once per connection; a generic plan spares the server
    // re-planning each execution for its parameter values (the plans do not depend on them).
    let generic = "-c plan_cache_mode=force_generic_plan";
    let options = match config.get_options() {
        Some(own) => format!("{own} {generic}"),
        None => generic.to_owned(),
    };
    config.options(&options);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(pg_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h user=u"), "host=h user=u");
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgres://h:1/x?password=secret&sslmode=disable"),
            "postgres://h:1/x?password=***&sslmode=disable"
        );
        assert_eq!(
            redact("host=h password=secret dbname=x"),
            "host=h password=*** dbname=x"
        );
        assert_eq!(
            redact("host=h password = 'se cr\\'et' user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(redact("user=passwordless"), "user=passwordless");
    }

    #[test]
    fn a_connection_attempt_times_out_unless_the_url_says_otherwise() {
        let default = config("postgres://u@h/db").unwrap();
        assert_eq!(default.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let own = config("postgres://u@h/db?connect_timeout=3").unwrap();
        assert_eq!(own.get_connect_timeout(), Some(&Duration::from_secs(3)));
    }

    #[test]
    fn schema_names_are_identifiers() {
        assert!(check_schema("tlo_test_1").is_ok());
        for bad in ["", "1abc", "a;drop", "a b", "a-b"] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
