//! The SQLite store and locker pass the conformance suite, each test on its own file.

tlo_conformance::store_conformance!(async {
    tlo_sqlite::SqliteStore::open(tlo_conformance::temp_path("store")).expect("open sqlite")
});
tlo_conformance::locker_conformance!(async {
    tlo_sqlite::SqliteStore::open(tlo_conformance::temp_path("locker"))
        .expect("open sqlite")
        .locker()
});
