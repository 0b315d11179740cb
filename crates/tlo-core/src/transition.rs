//! Reference semantics of every state write, on a job record in hand.
//!
//! Stores that load a record, change it and write it back call these; stores that write in place
//! (SQL) reproduce them, and the conformance suite checks that they agree.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{
    AttemptRecord, CancelOutcome, Completion, Error, Job, JobState, Outcome, Progress, Result,
};

/// Fails with [`Error::StaleAttempt`] unless `job` is at `attempt` and executing.
pub fn check_attempt(job: &Job, attempt: u32) -> Result<()> {
    if job.attempt != attempt || !job.state.is_executing() {
        return Err(Error::StaleAttempt {
            job: job.id,
            attempt,
            current: job.attempt,
        });
    }
    Ok(())
}

/// The claim order of two due jobs, given their submission sequence numbers: highest priority
/// first, then earliest eta, then earliest submission.
pub fn claim_order(a: &Job, a_seq: i64, b: &Job, b_seq: i64) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.eta.cmp(&b.eta))
        .then(a_seq.cmp(&b_seq))
}

/// `scheduled -> running` for `worker`: a new attempt begins.
pub fn apply_claim(job: &mut Job, worker: &str, now: DateTime<Utc>, lease: Duration) -> Result<()> {
    job.state.check_transition(job.id, JobState::Running)?;
    job.state = JobState::Running;
    job.attempt += 1;
    job.started_at = Some(now);
    job.finished_at = None;
    job.worker = Some(worker.to_owned());
    job.lease_until = Some(now + lease);
    job.attempts.push(AttemptRecord {
        attempt: job.attempt,
        worker: worker.to_owned(),
        started_at: now,
        finished_at: None,
        outcome: None,
        error: None,
    });
    Ok(())
}

/// Applies a worker's completion. Returns an error, and changes nothing, when the write is stale
/// or the state machine refuses it.
///
/// - `Done` ends `done`, or `cancelled` when a cancel was requested meanwhile.
/// - `Failed` with `retry_at` and attempts left goes back to `scheduled` at `retry_at`, unless a
///   cancel was requested; otherwise it ends `failed`.
/// - `Snoozed` goes back to `scheduled` without using up the attempt.
pub fn apply_completion(job: &mut Job, completion: &Completion) -> Result<()> {
    check_attempt(job, completion.attempt)?;
    let cancel_requested = matches!(job.state, JobState::CancelRequested | JobState::Cancelling);
    let at = completion.at;
    let (target, error) = match &completion.outcome {
        Outcome::Done(_) if cancel_requested => (JobState::Cancelled, None),
        Outcome::Done(_) => (JobState::Done, None),
        Outcome::Cancelled => (JobState::Cancelled, None),
        Outcome::Failed { error, retry_at } => {
            let retry = retry_at.is_some() && job.attempt < job.max_attempts && !cancel_requested;
            let target = if retry {
                JobState::Scheduled
            } else {
                JobState::Failed
            };
            (target, Some(error.clone()))
        }
        Outcome::Snoozed { .. } if cancel_requested => (JobState::Cancelled, None),
        Outcome::Snoozed { .. } => (JobState::Scheduled, None),
    };
    job.state.check_transition(job.id, target)?;

    if let Outcome::Snoozed { eta } = completion.outcome {
        if target == JobState::Scheduled {
            job.attempts.pop();
            job.attempt -= 1;
            job.state = JobState::Scheduled;
            job.eta = eta;
            job.started_at = None;
            job.worker = None;
            job.lease_until = None;
            return Ok(());
        }
    }

    if let Some(record) = job.attempts.last_mut() {
        record.finished_at = Some(at);
        record.outcome = Some(target);
        record.error = error.clone();
    }
    job.state = target;
    job.worker = None;
    job.lease_until = None;
    match (&completion.outcome, target) {
        (Outcome::Failed { retry_at, .. }, JobState::Scheduled) => {
            job.eta = retry_at.unwrap_or(at);
            job.error = error;
        }
        (Outcome::Done(result), JobState::Done) => {
            job.result = Some(result.clone());
            job.finished_at = Some(at);
            if job.progress.percent.is_some() {
                job.progress.percent = Some(100.0);
            }
        }
        _ => {
            job.error = error.or(job.error.take());
            job.finished_at = Some(at);
        }
    }
    Ok(())
}

/// A cancel request: `scheduled -> cancelled`, executing `running -> cancel_requested`.
/// A second request on the same job is refused, so exactly one of concurrent cancels succeeds.
pub fn apply_cancel_request(job: &mut Job, now: DateTime<Utc>) -> Result<CancelOutcome> {
    match job.state {
        JobState::Scheduled => {
            job.state = JobState::Cancelled;
            job.finished_at = Some(now);
            Ok(CancelOutcome::Cancelled)
        }
        JobState::Running if !job.cancellable => Err(Error::NotCancellable(job.id)),
        JobState::Running => {
            job.state = JobState::CancelRequested;
            Ok(CancelOutcome::Requested)
        }
        from => Err(Error::IllegalTransition {
            job: job.id,
            from,
            to: JobState::Cancelled,
        }),
    }
}

/// The worker saw the cancel: `cancel_requested -> cancelling`.
pub fn apply_acknowledge_cancel(job: &mut Job, attempt: u32) -> Result<()> {
    check_attempt(job, attempt)?;
    job.state.check_transition(job.id, JobState::Cancelling)?;
    job.state = JobState::Cancelling;
    Ok(())
}

/// A job whose worker vanished: back to `scheduled` when attempts remain (and no cancel was
/// asked), else it ends `failed` (or `cancelled`).
pub fn apply_rescue(job: &mut Job, now: DateTime<Utc>) {
    let error = format!(
        "worker {} lost: lease expired",
        job.worker.as_deref().unwrap_or("?")
    );
    let target = match job.state {
        JobState::CancelRequested | JobState::Cancelling => JobState::Cancelled,
        _ if job.attempt < job.max_attempts => JobState::Scheduled,
        _ => JobState::Failed,
    };
    if let Some(record) = job.attempts.last_mut() {
        record.finished_at = Some(now);
        record.outcome = Some(JobState::Failed);
        record.error = Some(error.clone());
    }
    job.state = target;
    job.worker = None;
    job.lease_until = None;
    job.error = Some(error);
    if target == JobState::Scheduled {
        job.eta = now;
    } else {
        job.finished_at = Some(now);
    }
}

/// Runs an ended job again (`tlo retry`, a process relaunch): back to `scheduled` at `eta`
/// with one more attempt allowed; the previous run's result, error, progress and end time are
/// cleared, its attempt history kept.
pub fn apply_relaunch(job: &mut Job, eta: DateTime<Utc>) -> Result<()> {
    if !(job.state.is_end() || job.state == JobState::Idle) {
        return Err(Error::IllegalTransition {
            job: job.id,
            from: job.state,
            to: JobState::Scheduled,
        });
    }
    job.state = JobState::Scheduled;
    job.eta = eta;
    job.max_attempts = job.max_attempts.max(job.attempt + 1);
    clear_run(job);
    Ok(())
}

/// Forgets the previous run's outcome (its attempt history stays).
fn clear_run(job: &mut Job) {
    job.result = None;
    job.error = None;
    job.progress = Progress::default();
    job.started_at = None;
    job.finished_at = None;
    job.worker = None;
    job.lease_until = None;
}

/// A change to a job that waits in `scheduled` (a workflow node waiting for its dependencies).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Make it due at `eta` with these arguments.
    Release {
        /// The arguments it runs with.
        args: serde_json::Value,
        /// When it becomes due.
        eta: DateTime<Utc>,
    },
    /// It will never run: `scheduled -> skipped` with this error.
    Skip {
        /// Why, e.g. `UPSTREAM_FAILED`.
        error: String,
    },
    /// New definition fields for a process, in whatever state it is: the next run uses them,
    /// the current one (if any) is left alone.
    Redefine {
        /// The arguments of its next runs.
        args: serde_json::Value,
        /// Its metadata.
        metadata: serde_json::Map<String, serde_json::Value>,
        /// Whether a running launch may be cancelled.
        cancellable: bool,
    },
    /// Back to `idle` after it ended (a dismissed process), clearing the run's progress,
    /// result, error and times.
    Dismiss,
}

/// Applies a [`Change`]; only a `scheduled` job can be released or skipped, only an ended
/// one dismissed; any can be redefined.
pub fn apply_change(job: &mut Job, change: &Change, now: DateTime<Utc>) -> Result<()> {
    match change {
        Change::Release { args, eta } => {
            if job.state != JobState::Scheduled {
                return Err(Error::IllegalTransition {
                    job: job.id,
                    from: job.state,
                    to: JobState::Scheduled,
                });
            }
            job.args = args.clone();
            job.eta = *eta;
        }
        Change::Skip { error } => {
            job.state.check_transition(job.id, JobState::Skipped)?;
            job.state = JobState::Skipped;
            job.error = Some(error.clone());
            job.finished_at = Some(now);
        }
        Change::Redefine {
            args,
            metadata,
            cancellable,
        } => {
            job.args = args.clone();
            job.metadata = metadata.clone();
            job.cancellable = *cancellable;
        }
        Change::Dismiss => {
            if !job.state.is_end() {
                return Err(Error::IllegalTransition {
                    job: job.id,
                    from: job.state,
                    to: JobState::Idle,
                });
            }
            job.state = JobState::Idle;
            clear_run(job);
        }
    }
    Ok(())
}

/// Refuses pruning of anything but an end state.
pub fn check_prunable(state: JobState) -> Result<()> {
    if state.is_end() {
        Ok(())
    } else {
        Err(Error::InvalidSetting {
            name: "prune state".into(),
            value: state.to_string(),
            expected: "an end state: done, failed, cancelled or skipped".into(),
        })
    }
}

/// Sets progress on an executing job.
pub fn apply_progress(job: &mut Job, attempt: u32, progress: Progress) -> Result<()> {
    check_attempt(job, attempt)?;
    job.progress = progress;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewJob;
    use serde_json::json;

    fn running(max_attempts: u32) -> Job {
        let mut new = NewJob::new("t", json!({}));
        new.max_attempts = max_attempts;
        let mut job = new.into_job(Utc::now());
        apply_claim(&mut job, "w1", Utc::now(), Duration::from_secs(30)).unwrap();
        job
    }

    fn complete(job: &mut Job, outcome: Outcome) -> Result<()> {
        let attempt = job.attempt;
        apply_completion(
            job,
            &Completion {
                id: job.id,
                attempt,
                outcome,
                at: Utc::now(),
            },
        )
    }

    #[test]
    fn done_after_cancel_request_ends_cancelled() {
        let mut job = running(1);
        assert_eq!(
            apply_cancel_request(&mut job, Utc::now()).unwrap(),
            CancelOutcome::Requested
        );
        complete(&mut job, Outcome::Done(json!(1))).unwrap();
        assert_eq!(job.state, JobState::Cancelled);
    }

    #[test]
    fn second_cancel_is_refused() {
        let mut job = running(1);
        apply_cancel_request(&mut job, Utc::now()).unwrap();
        assert!(matches!(
            apply_cancel_request(&mut job, Utc::now()),
            Err(Error::IllegalTransition { .. })
        ));
    }

    #[test]
    fn failure_with_attempts_left_is_rescheduled_and_keeps_error() {
        let mut job = running(2);
        let retry_at = Utc::now() + chrono::Duration::seconds(5);
        complete(
            &mut job,
            Outcome::Failed {
                error: "boom".into(),
                retry_at: Some(retry_at),
            },
        )
        .unwrap();
        assert_eq!(job.state, JobState::Scheduled);
        assert_eq!(job.eta, retry_at);
        assert_eq!(job.attempts[0].error.as_deref(), Some("boom"));
    }

    #[test]
    fn stale_attempt_is_fenced() {
        let mut job = running(1);
        let stale = Completion {
            id: job.id,
            attempt: 7,
            outcome: Outcome::Done(json!(null)),
            at: Utc::now(),
        };
        assert!(matches!(
            apply_completion(&mut job, &stale),
            Err(Error::StaleAttempt { .. })
        ));
        assert_eq!(job.state, JobState::Running);
    }

    #[test]
    fn snooze_returns_the_attempt() {
        let mut job = running(1);
        let eta = Utc::now() + chrono::Duration::seconds(1);
        complete(&mut job, Outcome::Snoozed { eta }).unwrap();
        assert_eq!(
            (job.state, job.attempt, job.eta),
            (JobState::Scheduled, 0, eta)
        );
        assert!(job.attempts.is_empty());
    }

    #[test]
    fn end_state_is_not_overwritten() {
        let mut job = running(1);
        complete(&mut job, Outcome::Done(json!(1))).unwrap();
        assert!(complete(&mut job, Outcome::Cancelled).is_err());
        assert_eq!(job.state, JobState::Done);
    }
}
