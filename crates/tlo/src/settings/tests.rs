//! Settings layering and parsing.

use super::*;

fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn defaults_when_nothing_is_set() {
    assert_eq!(
        SettingsBuilder::default().build_with_env(env(&[])).unwrap(),
        Settings::default()
    );
}

#[test]
fn by_default_a_vanished_workers_job_is_rescued_within_30_seconds() {
    let defaults = Settings::default();
    assert_eq!(defaults.rescue_within(), Duration::from_secs(25));
    let short = SettingsBuilder::default()
        .lease(Duration::from_secs(2))
        .build_with_env(env(&[]))
        .unwrap();
    assert_eq!(short.rescue_within(), Duration::from_secs(3));
}

#[test]
fn postgres_listen_is_on_unless_turned_off() {
    assert!(Settings::default().postgres_listen);
    let off = SettingsBuilder::default()
        .build_with_env(env(&[("TLO_POSTGRES_LISTEN", "false")]))
        .unwrap();
    assert!(!off.postgres_listen);
    let err = SettingsBuilder::default()
        .build_with_env(env(&[("TLO_POSTGRES_LISTEN", "sometimes")]))
        .unwrap_err();
    assert!(err.to_string().contains("TLO_POSTGRES_LISTEN"), "{err}");
}

#[test]
fn environment_overrides_defaults_and_builder_overrides_environment() {
    let vars = [
        ("TLO_CONCURRENCY", "4"),
        ("TLO_TICK_INTERVAL", "0.25"),
        ("TLO_STOP_BEHAVIOR", "cancel"),
        ("TLO_PANIC_MODE", "yes"),
        ("TLO_QUEUE_CONCURRENCY", "emails=2, reports=1"),
        ("TLO_QUEUE", "MapQueue"),
        ("TLO_TASK_STATE_STORE", "InMemoryTaskStateStore"),
        ("TLO_DEFAULT_QUEUE", ""),
    ];
    let s = SettingsBuilder::default()
        .build_with_env(env(&vars))
        .unwrap();
    assert_eq!(s.concurrency, 4);
    assert_eq!(s.tick_interval, Duration::from_millis(250));
    assert_eq!(s.stop_behavior, StopBehavior::Cancel);
    assert!(s.panic_mode);
    assert_eq!(s.queue_concurrency["emails"], 2);
    assert_eq!(s.default_queue, "default", "empty variable counts as unset");
    let s = SettingsBuilder::default()
        .concurrency(9)
        .set("stop_behavior", "Ignore")
        .unwrap()
        .build_with_env(env(&vars))
        .unwrap();
    assert_eq!((s.concurrency, s.stop_behavior), (9, StopBehavior::Ignore));
}

#[test]
fn bad_values_name_the_variable_and_accepted_values() {
    let cases = [
        ("TLO_STOP_BEHAVIOR", "Explode", "Drain"),
        ("TLO_TASK_STATE_STORE", "redis", "sqlite"),
        ("TLO_TASK_REGISTRY", "x", "memory"),
        ("TLO_QUEUE", "x", "MapQueue"),
        ("TLO_LOCKER", "x", "InMemoryLocker"),
        ("TLO_TICK_INTERVAL", "-1", "seconds > 0"),
        ("TLO_PANIC_MODE", "maybe", "true or false"),
        ("TLO_CONCURRENCY", "0", ">= 1"),
        ("TLO_QUEUE_CONCURRENCY", "emails", "queue=limit"),
        ("TLO_CANCEL_GRACE_MS", "soon", "milliseconds"),
        ("TLO_LEASE_SECS", "0", "seconds > 0"),
        ("TLO_RETAIN_DONE_SECS", "a week", "forever"),
    ];
    for (var, value, hint) in cases {
        let err = SettingsBuilder::default()
            .build_with_env(env(&[(var, value)]))
            .unwrap_err();
        match err {
            Error::InvalidSetting {
                name,
                value: v,
                expected,
            } => {
                assert_eq!((name.as_str(), v.as_str()), (var, value));
                assert!(expected.contains(hint), "{var}: {expected}");
            }
            other => panic!("{var}: {other}"),
        }
    }
}

#[test]
fn set_accepts_short_keys_and_variable_names_and_refuses_unknown_ones() {
    let s = SettingsBuilder::default()
        .set("concurrency", "3")
        .unwrap()
        .set("TLO_QUEUES", "a,b")
        .unwrap()
        .build_with_env(env(&[]))
        .unwrap();
    assert_eq!(
        (s.concurrency, s.queues.clone()),
        (3, vec!["a".to_string(), "b".to_string()])
    );
    let err = SettingsBuilder::default()
        .set("concurency", "3")
        .unwrap_err();
    assert!(err.to_string().contains("TLO_CONCURRENCY"), "{err}");
    let err = SettingsBuilder::default()
        .set("concurrency", "x")
        .unwrap_err();
    assert!(err.to_string().contains("TLO_CONCURRENCY"), "{err}");
}

#[test]
fn typed_builder_values_are_validated() {
    let err = SettingsBuilder::default()
        .concurrency(0)
        .build_with_env(env(&[]))
        .unwrap_err();
    assert!(err.to_string().contains("TLO_CONCURRENCY"));
    let err = SettingsBuilder::default()
        .default_queue(" ")
        .build_with_env(env(&[]))
        .unwrap_err();
    assert!(err.to_string().contains("TLO_DEFAULT_QUEUE"));
}
