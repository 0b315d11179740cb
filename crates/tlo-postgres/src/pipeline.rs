//! Transactions on the hot path whose `BEGIN` and `COMMIT` travel with the statements next to
//! them: a claim from one queue costs one round trip instead of three.

use deadpool_postgres::Object;
use tlo_core::Result;

use crate::pool::db_error;

/// A transaction on a pooled connection, begun with [`Pipelined::begin`] (send it together with
/// the first statements) and ended with [`Pipelined::commit`] (together with the last one).
///
/// Dropped before its commit (an error, a cancelled future), it discards its connection
/// instead of returning it to the pool: closing the connection rolls the transaction back on
/// the server, and no other caller can ever receive a connection inside an open transaction.
pub(crate) struct Pipelined {
    client: Option<Object>,
}

impl Pipelined {
    pub(crate) fn new(client: Object) -> Pipelined {
        Pipelined {
            client: Some(client),
        }
    }

    /// The connection, for the statements of the transaction.
    pub(crate) fn db(&self) -> &Object {
        self.client
            .as_ref()
            .expect("a pipelined transaction keeps its connection until it ends")
    }

    /// Sends `BEGIN`; poll it before (in `try_join!`, to the left of) the first statements.
    pub(crate) async fn begin(&self) -> Result<()> {
        self.db().batch_execute("BEGIN").await.map_err(db_error)
    }

    /// Sends `COMMIT`; poll it after (to the right of) the last statement, which must be
    /// prepared already: one still being prepared would be sent after the `COMMIT`, outside the
    /// transaction. A failed statement before it has aborted the transaction, so this `COMMIT`
    /// rolls back, and the statement's error is what `try_join!` reports.
    pub(crate) async fn commit(&self) -> Result<()> {
        self.db().batch_execute("COMMIT").await.map_err(db_error)
    }

    /// Returns the connection to the pool: call once [`Pipelined::commit`] succeeded.
    pub(crate) fn finish(mut self) {
        self.client.take();
    }
}

impl Drop for Pipelined {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Detached from the pool and dropped: the connection closes.
            drop(Object::take(client));
        }
    }
}
