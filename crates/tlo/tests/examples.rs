//! The examples run as tests, so CI keeps them working.

#[allow(unreachable_pub)]
#[path = "../examples/quickstart.rs"]
mod quickstart;
#[allow(unreachable_pub)]
#[path = "../examples/workers.rs"]
mod workers;

#[test]
fn quickstart_runs() {
    quickstart::main().unwrap();
}

#[test]
fn workers_example_runs() {
    workers::main().unwrap();
}
