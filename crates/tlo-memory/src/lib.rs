//! # tlo-memory
//!
//! The in-memory [`Store`](tlo_core::Store) and [`Locker`](tlo_core::Locker) of tlo: everything
//! in one process, nothing on disk. For tests, prototypes and benchmarks of the engine itself.

mod locker;
mod store;

pub use locker::MemoryLocker;
pub use store::MemoryStore;
