//! The job state machine (optio's names, plus `skipped`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, JobId, Result};

/// Where a job is in its life.
///
/// ```text
/// idle -> scheduled -> running -> done | failed
/// running -> cancel_requested -> cancelling -> cancelled
/// scheduled -> cancelled | skipped
/// running -> scheduled            (retry with eta, or put back while its lock is held)
/// done | failed | cancelled | skipped -> scheduled (relaunch) | idle (dismiss)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Defined but not launched (processes).
    Idle,
    /// Waiting for its eta and a free worker.
    Scheduled,
    /// Claimed by a worker; the handler runs.
    Running,
    /// A cancel was requested; the worker has not acknowledged it yet.
    CancelRequested,
    /// The worker saw the cancel and is unwinding the handler.
    Cancelling,
    /// Ended successfully.
    Done,
    /// Ended with an error and no attempts left.
    Failed,
    /// Ended by cancellation.
    Cancelled,
    /// Never ran because an upstream job did not succeed.
    Skipped,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 9] = [
        JobState::Idle,
        JobState::Scheduled,
        JobState::Running,
        JobState::CancelRequested,
        JobState::Cancelling,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Skipped,
    ];

    /// The snake_case name used in storage, the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Idle => "idle",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::CancelRequested => "cancel_requested",
            JobState::Cancelling => "cancelling",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Skipped => "skipped",
        }
    }

    /// Active states: scheduled, running, cancel_requested, cancelling.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Scheduled
                | JobState::Running
                | JobState::CancelRequested
                | JobState::Cancelling
        )
    }

    /// End states: done, failed, cancelled, skipped.
    pub fn is_end(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled | JobState::Skipped
        )
    }

    /// States in which a handler is executing on some worker.
    pub fn is_executing(self) -> bool {
        matches!(
            self,
            JobState::Running | JobState::CancelRequested | JobState::Cancelling
        )
    }

    /// Whether the state machine allows `self -> to`.
    ///
    /// ```
    /// use tlo_core::JobState::*;
    /// assert!(Scheduled.can_transition_to(Running));
    /// assert!(!Done.can_transition_to(Failed));
    /// ```
    pub fn can_transition_to(self, to: JobState) -> bool {
        use JobState::*;
        match (self, to) {
            (Idle, Scheduled) => true,
            (Scheduled, Running | Cancelled | Skipped) => true,
            (Running, Done | Failed | Scheduled | CancelRequested) => true,
            // Cancel paths: the worker acknowledges, then the handler ends one way or another.
            (CancelRequested, Cancelling | Cancelled | Failed | Done) => true,
            (Cancelling, Cancelled | Failed | Done) => true,
            (Done | Failed | Cancelled | Skipped, Scheduled | Idle) => true,
            _ => false,
        }
    }

    /// Checks a transition, returning [`Error::IllegalTransition`] when refused.
    pub fn check_transition(self, job: JobId, to: JobState) -> Result<()> {
        if self.can_transition_to(to) {
            Ok(())
        } else {
            Err(Error::IllegalTransition {
                job,
                from: self,
                to,
            })
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::InvalidSetting {
                name: "job state".into(),
                value: s.into(),
                expected: JobState::ALL.map(JobState::as_str).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::JobState::{self, *};

    #[test]
    fn end_states_are_never_overwritten_except_by_relaunch_or_dismiss() {
        for end in [Done, Failed, Cancelled, Skipped] {
            for to in JobState::ALL {
                let allowed = end.can_transition_to(to);
                assert_eq!(allowed, matches!(to, Scheduled | Idle), "{end} -> {to}");
            }
        }
    }

    #[test]
    fn state_names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
        }
        let err = "pending".parse::<JobState>().unwrap_err().to_string();
        assert!(
            err.contains("pending") && err.contains("cancel_requested"),
            "{err}"
        );
    }

    #[test]
    fn groups_partition_states() {
        for state in JobState::ALL {
            assert!(!(state.is_active() && state.is_end()), "{state}");
        }
        assert!(!Idle.is_active() && !Idle.is_end());
    }
}
