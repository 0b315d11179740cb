//! Batched store rounds for shared stores (SQLite, PostgreSQL), after River's completer.
//!
//! A runner hands its finished attempt over and goes on to its next job at once: outcomes are
//! recorded apart from the runners, many in one round (one transaction), and hooks, metrics and
//! events for each follow its recording. Runners asking for a next job are served together by
//! one claim. The two streams do not wait for each other: a claim never waits for the durable
//! commit of the outcomes before it, and outcomes pile up into larger rounds while one is in
//! flight, so the cost of a round is shared by more jobs the busier the store is.
//!
//! While runners go through jobs faster than a claim takes, each claim also takes the jobs they
//! will ask for while the next claim is under way (at most one per slot), kept [ahead](Ahead):
//! runners take their next job there at once, rather than all wait for the claim.

mod claims;
mod outcomes;

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};

use crate::engine::Engine;
pub(crate) use outcomes::Finished;

use claims::{Ahead, Ask, claim_rounds};
use outcomes::{Finish, OUTCOMES_PER_SLOT, record_rounds};

/// The two streams of a running engine on a shared store.
pub(crate) struct Rounds {
    outcomes: mpsc::UnboundedSender<Finish>,
    claims: mpsc::UnboundedSender<Ask>,
    room: Arc<Semaphore>,
    ahead: Arc<Mutex<Ahead>>,
    /// The claim rounds in flight (a permit each).
    claiming: Arc<Semaphore>,
}

impl Rounds {
    /// Starts both streams; they end when the returned value is dropped (and their last
    /// rounds are done).
    pub(crate) fn start(engine: &Arc<Engine>) -> Rounds {
        let (outcomes, finishes) = mpsc::unbounded_channel();
        let (claims, wants) = mpsc::unbounded_channel();
        tokio::spawn(record_rounds(engine.clone(), finishes));
        let ahead = Arc::new(Mutex::new(Ahead::default()));
        let claiming = rounds_in_flight(engine);
        tokio::spawn(claim_rounds(
            engine.clone(),
            wants,
            ahead.clone(),
            claiming.clone(),
        ));
        Rounds {
            outcomes,
            claims,
            ahead,
            claiming,
            room: Arc::new(Semaphore::new(
                OUTCOMES_PER_SLOT * engine.settings.concurrency.max(1),
            )),
        }
    }
}

/// Rounds in flight at once, per stream: while one waits on the database, the next batch fills.
pub(super) fn rounds_in_flight(engine: &Engine) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(engine.store.round_concurrency().max(1)))
}
