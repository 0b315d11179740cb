//! # tlo-postgres
//!
//! The distributed store of tlo: any number of worker processes on any number of machines share
//! one PostgreSQL database.
//!
//! - embedded versioned migrations (`tlo migrate`, or on connect), never destructive, safe to
//!   run concurrently;
//! - claims with `FOR UPDATE SKIP LOCKED`; every state write locks its row and is fenced by the
//!   attempt number, so a stale worker cannot overwrite a newer attempt;
//! - leases renewed by the engine's heartbeat; expired ones rescued by any worker;
//! - `LISTEN`/`NOTIFY` wake-ups with reconnection; the engine polls as a fallback;
//! - exclusivity keys as lock rows with a lease ([`PostgresLocker`]);
//! - enqueue inside your own transaction ([`PostgresStore::enqueue_in`]) and batch enqueue in one
//!   round trip.
//!
//! Tests read `TLO_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and
//! each use their own schema.

mod hot_sql;
mod listen;
mod locker;
mod pipeline;
mod pool;
mod reads;
mod schema;
mod store;
mod writes;

pub use locker::PostgresLocker;
pub use schema::SCHEMA_VERSION;
pub use store::{PostgresOptions, PostgresStore};
