//! Connections: a pool for queries, errors that name the server without its password.

use std::str::FromStr;

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

/// `postgres://user:secret@host/db` -> `postgres://user@host/db`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or(user);
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
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

pub(crate) fn config(url: &str) -> Result<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url)
        .map_err(|err| pg_error(format!("invalid database URL {}: {err}", redact(url))))
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
    }

    #[test]
    fn schema_names_are_identifiers() {
        assert!(check_schema("tlo_test_1").is_ok());
        for bad in ["", "1abc", "a;drop", "a b", "a-b"] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
