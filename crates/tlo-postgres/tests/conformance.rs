//! The PostgreSQL store and locker pass the conformance suite, each test in its own schema.

mod common;

tlo_conformance::store_conformance!(async { common::store().await });
tlo_conformance::locker_conformance!(async { common::store().await.locker() });
