//! The in-memory store and locker pass the conformance suite.

tlo_conformance::store_conformance!(async { tlo_memory::MemoryStore::new() });
tlo_conformance::locker_conformance!(async { tlo_memory::MemoryLocker::new() });
