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

/// A connection string fit to show: rebuilt from what tokio-postgres reads in it (user, hosts,
/// ports, database), so no password can show, whatever form or escaping it was written in.
/// `postgres://user:secret@host/db` -> `postgres://user@host/db`; `host=h user=u password=x`
/// -> `postgres://u@h`. A string tokio-postgres cannot read is not shown at all.
pub(crate) fn redact(url: &str) -> String {
    use tokio_postgres::config::Host;
    let Ok(config) = tokio_postgres::Config::from_str(url) else {
        return "<an unreadable connection string>".to_owned();
    };
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one each.
            match ports.get(i).or(ports.first().filter(|_| ports.len() == 1)) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|user| format!("{user}@"))
        .unwrap_or_default();
    let dbname = config
        .get_dbname()
        .map(|db| format!("/{db}"))
        .unwrap_or_default();
    format!("postgres://{user}{}{dbname}", hosts.join(","))
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

/// How long a connection attempt may take (for each of the URL's addresses) unless the URL says
/// (`connect_timeout`): a server that drops packets is reported after this, not after the
/// operating system gives up (minutes).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection settings of `url`, with [`CONNECT_TIMEOUT`] unless it sets its own.
pub(crate) fn config(url: &str) -> Result<tokio_postgres::Config> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|err| pg_error(format!("invalid database URL {}: {err}", redact(url))))?;
    // `connect_timeout=0` (wait as long as it takes) reads as unset: keep it.
    if config.get_connect_timeout().is_none() && !url.contains("connect_timeout") {
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
        for (given, shown) in [
            ("postgres://u:secret@h:5432/db", "postgres://u@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h:5432/db"),
            (
                "postgresql://u:secret@h1:1,h2:2/db",
                "postgres://u@h1:1,h2:2/db",
            ),
            ("host=h user=u", "postgres://u@h"),
            (
                "postgres://h:1/x?password=secret&sslmode=disable",
                "postgres://h:1/x",
            ),
            ("host=h password=secret dbname=x", "postgres://h/x"),
            ("host=h password='se cr\\'et' user=u", "postgres://u@h"),
            ("host=h password=se\\ cret user=u", "postgres://u@h"),
            ("postgres://u:se?cret@h/db", "postgres://u@h:5432/db"),
            (
                "postgres://u@h/db?pass%77ord=secret",
                "postgres://u@h:5432/db",
            ),
            (
                "host=h password=secret application_name=http://x",
                "postgres://h",
            ),
            ("password=a://secret host=h", "postgres://h"),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
        assert!(!redact("postgres://u:secret@h/db?bogus=1").contains("secret"));
        assert!(!redact("not a url secret=").contains("secret"));
    }

    #[test]
    fn a_connection_attempt_times_out_unless_the_url_says_otherwise() {
        let default = config("postgres://u@h/db").unwrap();
        assert_eq!(default.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let own = config("postgres://u@h/db?connect_timeout=3").unwrap();
        assert_eq!(own.get_connect_timeout(), Some(&Duration::from_secs(3)));
        let forever = config("postgres://u@h/db?connect_timeout=0").unwrap();
        assert_eq!(forever.get_connect_timeout(), None);
    }

    #[test]
    fn schema_names_are_identifiers() {
        assert!(check_schema("tlo_test_1").is_ok());
        for bad in ["", "1abc", "a;drop", "a b", "a-b"] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
