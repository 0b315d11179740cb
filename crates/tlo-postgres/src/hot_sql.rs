//! The statements on the hot path of [`PostgresStore`](crate::PostgresStore).

use crate::store::JOB;

/// The statements on the hot path, rendered once for the schema; each connection prepares
/// them once (`prepare_cached`), so the server neither parses nor plans them per call.
#[derive(Debug)]
pub(crate) struct HotSql {
    pub(crate) insert: String,
    pub(crate) next_eta: String,
    pub(crate) claim: String,
    pub(crate) claim_candidates: String,
    pub(crate) claim_ids: String,
    pub(crate) save: String,
    pub(crate) save_claimed: String,
    pub(crate) lock_many: String,
    pub(crate) lock_one: String,
    pub(crate) get: String,
}

impl HotSql {
    pub(crate) fn new(schema: &str) -> HotSql {
        let jobs = format!("{schema}.jobs");
        // The priority levels of queue $1 with due jobs, each with its first entry this
        // snapshot sees; then up to $3 jobs due by $2, best first, locked.
        let levels = format!(
            "levels(priority, eta, seq) AS (
                 (SELECT priority, eta, seq FROM {jobs}
                  WHERE state = 'scheduled' AND queue = $1
                  ORDER BY priority DESC, eta, seq LIMIT 1)
                 UNION ALL
                 SELECT n.priority, n.eta, n.seq FROM levels l
                 CROSS JOIN LATERAL (
                     SELECT j.priority, j.eta, j.seq FROM {jobs} j
                     WHERE j.state = 'scheduled' AND j.queue = $1 AND j.priority < l.priority
                     ORDER BY j.priority DESC, j.eta, j.seq LIMIT 1) n)"
        );
        let candidates = format!(
            "SELECT c.id, c.seq, c.priority, c.eta, c.tid FROM levels l
             CROSS JOIN LATERAL (
                 SELECT id, seq, priority, eta, ctid AS tid FROM {jobs} j
                 WHERE j.state = 'scheduled' AND j.queue = $1 AND j.priority = l.priority
                   AND (j.eta, j.seq) >= (l.eta, l.seq) AND j.eta <= $2
                 ORDER BY j.eta, j.seq LIMIT $3
                 FOR UPDATE SKIP LOCKED) c
             LIMIT $3"
        );
        HotSql {
            // Inserting and waking the workers in one statement: one round trip, and outside a
            // transaction no BEGIN or COMMIT either. Identical notifications of one transaction
            // fold into one.
            insert: format!(
                "WITH ins AS (
                     INSERT INTO {jobs} (id, task, queue, state, priority, eta, unique_key, parent,
                         root, depth, ord, data)
                     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[],
                         $5::int4[], $6::int8[], $7::text[], $8::uuid[], $9::uuid[], $10::int4[],
                         $11::int4[], $12::json[])
                     ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
                     RETURNING id)
                 SELECT id, pg_notify($13, '') FROM ins"
            ),
            // One priority level at a time (a loose index scan of the levels present), each read
            // a range of `jobs_due` that ends at the first job not yet due: jobs waiting for a
            // later eta (delayed jobs, workflow nodes waiting for their dependencies) are never
            // stepped over, however many there are (5 ms -> 0.13 ms with 100,000 waiting).
            // Levels are read lazily: once LIMIT rows are found, lower levels are not touched.
            // The earliest eta of each priority level is the first entry of its index range.
            next_eta: format!(
                "WITH RECURSIVE levels(queue, priority, eta, seq) AS (
                     SELECT f.queue, f.priority, f.eta, f.seq FROM unnest($1::text[]) AS q
                     CROSS JOIN LATERAL (
                         SELECT queue, priority, eta, seq FROM {jobs}
                         WHERE state = 'scheduled' AND queue = q
                         ORDER BY priority DESC, eta, seq LIMIT 1) f
                     UNION ALL
                     SELECT n.queue, n.priority, n.eta, n.seq FROM levels l
                     CROSS JOIN LATERAL (
                         SELECT j.queue, j.priority, j.eta, j.seq FROM {jobs} j
                         WHERE j.state = 'scheduled' AND j.queue = l.queue
                           AND j.priority < l.priority
                         ORDER BY j.priority DESC, j.eta, j.seq LIMIT 1) n)
                 SELECT MIN(eta) FROM levels"
            ),
            // Each priority level is found by its first entry in `jobs_due` that this snapshot
            // sees, and the claim of that level starts there: the index entries of jobs claimed
            // since the last vacuum (dead, but still in the index) are stepped over once, not
            // once to find the level and again to claim from it. The claim writes columns only
            // (see migration 4) and returns the documents as they are. Each locked row is
            // updated where it lies (by `ctid`: the version the lock returned), not looked up
            // again by id.
            claim: format!(
                "WITH RECURSIVE {levels}, picked AS ({candidates})
                 UPDATE {jobs} AS j SET state = 'running', worker = $4, lease_until = $5,
                     claimed_at = $2
                 FROM picked p WHERE j.ctid = p.tid
                 RETURNING p.seq, j.data, j.ctid::text"
            ),
            // A claim from several queues: the due jobs of each queue (locked), of which the
            // caller keeps the best and claims them with `claim_ids`.
            claim_candidates: format!(
                "WITH RECURSIVE {levels} SELECT id, seq, priority, eta FROM ({candidates}) c"
            ),
            claim_ids: format!(
                "UPDATE {jobs} SET state = 'running', worker = $2, lease_until = $3,
                     claimed_at = $4
                 WHERE id = ANY($1)
                 RETURNING seq, data, ctid::text"
            ),
            // Writing back and, when a job is `scheduled` again, waking the workers: one
            // statement, so that it can travel with the COMMIT after it.
            save: format!(
                "WITH saved AS ({update} WHERE j.id = u.id RETURNING u.state)
                 SELECT pg_notify($10, '') WHERE EXISTS (SELECT FROM saved WHERE state = 'scheduled')",
                update = write_back(&jobs, &[])
            ),
            // `save` for completions prepared from this process's claims: each row is written
            // only if it still holds that claim, and the ids written come back. One statement,
            // its own transaction. The claim's time is condition enough: every write of a whole
            // document clears `claimed_at` (and a new claim sets another), and the one write
            // that keeps it, a lease renewal, is overwritten by any outcome. Each row is found
            // where the claim left it (`ctid`), not looked up by id: a row written since has
            // moved, and is left to the caller's locked path like any other.
            save_claimed: format!(
                "WITH saved AS ({update} WHERE j.ctid = u.tid::tid AND j.id = u.id
                                     AND j.claimed_at = u.claimed_at
                                 RETURNING j.id, u.state)
                 SELECT id FROM saved
                 UNION ALL
                 SELECT NULL FROM (SELECT pg_notify($10, '')
                     WHERE EXISTS (SELECT FROM saved WHERE state = 'scheduled')) AS woken",
                update = write_back(
                    &jobs,
                    &[("$11::int8[]", "claimed_at"), ("$12::text[]", "tid")]
                )
            ),
            // In id order, so that concurrent batches lock rows in the same order.
            lock_many: format!("SELECT {JOB} FROM {jobs} WHERE id = ANY($1) ORDER BY id FOR UPDATE"),
            lock_one: format!("SELECT {JOB} FROM {jobs} WHERE id = $1 FOR UPDATE"),
            get: format!("SELECT {JOB} FROM {jobs} WHERE id = $1"),
        }
    }
}

/// `UPDATE jobs ... FROM unnest(...) AS u(...)` writing back the columns and document given in
/// parameters `$1`-`$9`, with `more` arrays unnested beside them: (parameter, name in `u`).
fn write_back(jobs: &str, more: &[(&str, &str)]) -> String {
    let arrays: String = more.iter().map(|(param, _)| format!(", {param}")).collect();
    let names: String = more.iter().map(|(_, name)| format!(", {name}")).collect();
    format!(
        "UPDATE {jobs} AS j SET state = u.state, queue = u.queue, priority = u.priority,
             eta = u.eta, worker = u.worker, lease_until = u.lease_until,
             finished_at = u.finished_at, data = u.data::json, claimed_at = NULL
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::text[],
             $7::int8[], $8::int8[], $9::text[]{arrays})
             AS u(id, state, queue, priority, eta, worker, lease_until, finished_at, data{names})"
    )
}
