//! # tlo-conformance
//!
//! One suite, written once, run against every [`Store`] and [`Locker`]: same inputs, same
//! observable results. A new backend passes by implementing the contracts and adding one line
//! to a test file:
//!
//! ```ignore
//! tlo_conformance::store_conformance!(async { my_backend::MyStore::connect_isolated().await });
//! tlo_conformance::locker_conformance!(async { my_backend::MyLocker::connect_isolated().await });
//! ```
//!
//! The expression is evaluated once per test and must yield an isolated, empty store (its own
//! file, schema or database), so that tests run in parallel.

pub mod cases;
pub mod locker_cases;

/// A fresh path under the system temp directory for a file-backed store in one test.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tlo-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir.join(format!("{name}-{n}.db"))
}

/// Generates one test per store case in a module `conformance`.
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::__store_tests!($make;
            enqueue_and_get_round_trip,
            batch_enqueue_keeps_order,
            unique_key_returns_existing_job,
            claim_order_priority_then_eta_then_submission,
            claims_pass_over_waiting_jobs_at_every_priority,
            future_jobs_wait_for_their_eta,
            claim_respects_limits_and_named_queues,
            claim_starts_an_attempt_with_a_lease,
            done_stores_result,
            failure_with_attempts_left_is_retried,
            failure_without_attempts_left_fails,
            stale_completion_is_fenced,
            end_states_are_never_overwritten,
            snooze_returns_the_attempt,
            cancel_scheduled_job,
            cancel_running_job_requests_it,
            exactly_one_concurrent_cancel_succeeds,
            cancel_of_end_state_is_illegal,
            non_cancellable_running_job_refuses_cancel,
            done_after_cancel_request_ends_cancelled,
            renew_leases_reports_states,
            rescue_expired_leases,
            progress_is_fenced,
            completion_keeps_writes_made_after_the_claim,
            claimed_jobs_read_back_as_claimed,
            completion_after_lease_renewals,
            logs_in_order,
            list_filters_and_order,
            count_due_and_next_eta,
            cancel_scheduled_by_queue,
            schedule_slots_fire_once,
            relaunch_runs_an_ended_job_again,
            idle_jobs_launch_and_dismiss,
            delete_only_inactive_jobs_with_their_logs,
            prune_removes_only_old_ended_jobs,
            prune_keeps_ended_nodes_of_active_trees,
            completions_in_one_round_succeed_or_fail_alone,
            enqueue_and_claim_sees_the_new_jobs,
            waiting_jobs_are_released_or_skipped,
            waiting_jobs_are_changed_together,
            unknown_job_is_none
        );
    };
}

/// Generates one test per locker case in a module `locker_conformance`.
#[macro_export]
macro_rules! locker_conformance {
    ($make:expr) => {
        $crate::__locker_tests!($make;
            acquire_contend_release,
            same_owner_reacquires,
            only_the_holder_renews,
            expired_lock_is_taken_over
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_tests {
    ($make:expr; $($case:ident),* $(,)?) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = ::std::sync::Arc::new($make.await);
                    $crate::cases::$case(store).await;
                }
            )*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __locker_tests {
    ($make:expr; $($case:ident),* $(,)?) => {
        mod locker_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let locker = $make.await;
                    $crate::locker_cases::$case(&locker).await;
                }
            )*
        }
    };
}
