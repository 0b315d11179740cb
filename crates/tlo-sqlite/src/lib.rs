//! # tlo-sqlite
//!
//! The embedded default store of tlo: one SQLite file, zero set-up.
//!
//! - WAL journal, embedded versioned migrations applied at open;
//! - one connection thread per process; calls are batched into one transaction each
//!   (group commit), so claims and completions of many workers cost one fsync;
//! - several processes may share a file: writes take turns under SQLite's lock;
//! - exclusivity locks are rows with a lease ([`SqliteLocker`]).
//!
//! Wake-ups within a process come from the engine; other processes on the same file are seen by
//! the engine's polling fallback (`TLO_POLL_INTERVAL_MS`).

mod conn;
mod locker;
mod rows;
mod schema;
mod store;

pub use locker::SqliteLocker;
pub use schema::SCHEMA_VERSION;
pub use store::SqliteStore;
