//! One connection on its own thread; calls queue up and run in batches, one transaction per
//! batch (group commit), each call in its own savepoint so a failing call changes nothing.

use std::path::Path;
use std::sync::mpsc;
use std::thread;

use rusqlite::Connection;
use tlo_core::{Error, Result};
use tokio::sync::oneshot;

/// Most calls committed together.
const BATCH: usize = 512;

type Reply = Box<dyn FnOnce(Option<&str>) + Send>;
type Call = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// A handle on the connection thread; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    calls: mpsc::Sender<Call>,
}

pub(crate) fn store_error(err: impl std::fmt::Display) -> Error {
    Error::store(format!("sqlite: {err}"))
}

impl Conn {
    /// Opens `path` (WAL, busy timeout), runs `setup` on it, and starts the thread.
    pub(crate) fn open(path: &Path, setup: impl Fn(&mut Connection) -> Result<()>) -> Result<Conn> {
        // Two processes creating the same file at once: switching a new database to WAL can be
        // refused without waiting ("database is locked"); try again for a while.
        let mut tries = 0;
        let conn = loop {
            match Self::prepare(path, &setup) {
                Ok(conn) => break conn,
                Err(err) if tries < 100 && err.to_string().contains("locked") => {
                    tries += 1;
                    thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(err) => return Err(err),
            }
        };
        let (calls, queue) = mpsc::channel::<Call>();
        let (stop, stopped) = mpsc::channel::<()>();
        let checkpointer = Connection::open(path)
            .and_then(|c| c.busy_timeout(RESTART_WAIT).map(|_| c))
            .map_err(|err| store_error(format!("cannot open {}: {err}", path.display())))?;
        thread::Builder::new()
            .name("tlo-sqlite-checkpoint".into())
            .spawn(move || checkpoint(checkpointer, stopped))
            .map_err(Error::Io)?;
        thread::Builder::new()
            .name("tlo-sqlite".into())
            .spawn(move || {
                serve(conn, queue);
                drop(stop);
            })
            .map_err(Error::Io)?;
        Ok(Conn { calls })
    }

    fn prepare(path: &Path, setup: &impl Fn(&mut Connection) -> Result<()>) -> Result<Connection> {
        let mut conn = Connection::open(path)
            .map_err(|err| store_error(format!("cannot open {}: {err}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(store_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(store_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(store_error)?;
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(store_error)?;
        // No checkpoints on the writer's thread: they copy the WAL back into the database file
        // and wait for the disk; the checkpointer thread does that beside it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(store_error)?;
        // 4 MiB of page cache (the default is 2 MiB). Not more: SQLite scans the whole page
        // cache's hash table when it ends each write transaction (`pager_end_transaction` ->
        // `pcache1TruncateUnsafe`, seen in profiles), so a larger cache makes every commit
        // slower. Drain of 100,000 jobs: 32 MiB 15,700-16,300 jobs/s, 4 MiB 19,100-21,000,
        // 2 MiB the same; 128 MiB spent 14% of all CPU in that scan.
        conn.pragma_update(None, "cache_size", -4096)
            .map_err(store_error)?;
        conn.set_prepared_statement_cache_capacity(64);
        setup(&mut conn)?;
        Ok(conn)
    }

    /// Runs `f` on the connection thread inside the current batch's transaction.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let call: Call = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move |commit_error: Option<&str>| {
                let result = match commit_error {
                    Some(err) => Err(store_error(err)),
                    None => result,
                };
                let _ = tx.send(result);
            })
        });
        self.calls
            .send(call)
            .map_err(|_| store_error("connection thread stopped"))?;
        rx.await
            .map_err(|_| store_error("connection thread stopped"))?
    }
}

fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    exec_cached(conn, "SAVEPOINT call").map_err(store_error)?;
    match f(conn) {
        Ok(value) => {
            exec_cached(conn, "RELEASE call").map_err(store_error)?;
            Ok(value)
        }
        Err(err) => {
            let _ = exec_cached(conn, "ROLLBACK TO call");
            let _ = exec_cached(conn, "RELEASE call");
            Err(err)
        }
    }
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// WAL frames (16 MiB of 4 KiB pages) past which a passive checkpoint is followed by a
/// restarting one.
///
/// SQLite rewinds the WAL to its start only when a write begins with every frame copied back,
/// which a busy writer never lets a passive checkpoint reach: the WAL then grows for as long as
/// the writer is busy (300 MiB in a 40,000-job drain), and every frame lands in a freshly
/// allocated block the kernel zeroes first (a quarter of the writer thread). A restarting
/// checkpoint holds the writer back for the few frames written since the passive one, so the
/// next write rewinds and reuses blocks already on disk.
const RESTART_AFTER_FRAMES: i64 = 4096;

/// The longest a restarting checkpoint waits for a reader in another process (while holding
/// this process's writer back); past it, it gives up until the next round.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Copies the WAL back into the database file now and then, on its own connection, until the
/// store's connection thread stops; a passive checkpoint never blocks the writer, a restarting
/// one only for the frames written since the passive one.
fn checkpoint(conn: Connection, stopped: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            row.get::<_, i64>(1)
        }) {
            Ok(frames) if frames > RESTART_AFTER_FRAMES => {
                if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                    tracing::debug!(error = %err, "sqlite: restarting checkpoint skipped");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "sqlite: checkpoint skipped"),
        }
    }
    // A last full pass, so a closed store leaves a small WAL behind.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn serve(conn: Connection, queue: mpsc::Receiver<Call>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        // IMMEDIATE takes the write lock up front: other processes on the file wait (busy
        // timeout) instead of failing halfway.
        if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Still busy after the timeout: run each call on its own (a savepoint outside a
            // transaction is one), so each succeeds or fails alone.
            tracing::warn!(error = %err, "sqlite: cannot begin a batch; running calls one by one");
            for call in batch {
                call(&conn)(None);
            }
            continue;
        }
        let replies: Vec<Reply> = batch.into_iter().map(|call| call(&conn)).collect();
        let commit = conn.execute_batch("COMMIT").map_err(|err| err.to_string());
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let error = commit.err();
        for reply in replies {
            reply(error.as_deref());
        }
    }
}
