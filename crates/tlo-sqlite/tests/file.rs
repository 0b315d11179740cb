//! The SQLite file as other tools see it.

#[test]
fn the_file_is_in_wal_mode_for_every_connection() {
    let dir = std::env::temp_dir().join(format!("tlo-sqlite-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wal.db");
    let store = tlo_sqlite::SqliteStore::open(&path).unwrap();
    // WAL is a property of the file: a connection that did not ask for it sees it too.
    let other = rusqlite::Connection::open(&path).unwrap();
    let mode: String = other
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(other);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_url_of_another_scheme_is_refused_not_created_as_a_path() {
    let err = tlo_sqlite::SqliteStore::open_url("postgres://u:secret@127.0.0.1/x").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, tlo_core::Error::InvalidSetting { .. }),
        "{text}"
    );
    assert!(text.contains("TLO_TASK_STATE_STORE=postgres"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert!(!std::path::Path::new("postgres:").exists());
}
