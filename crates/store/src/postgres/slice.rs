//! The slice stream on PostgreSQL: counts, rows (or a delta's changes) and the base
//! from one REPEATABLE READ snapshot, rows through a portal; pruning old history.

use std::sync::atomic::{AtomicUsize, Ordering};

use postgres::IsolationLevel;

use super::types::{self, Bind, Kind};
use super::{PgStore, in_tx};
use crate::Slices;
use crate::delta::{Changed, DeltaSql, Drive, Lanes, RowCost, choose, delta_sql};
use crate::dialect::SqlDialect;
use crate::plan::quote_literal;
use crate::plan::{SlicePlan, TablePlan};
use crate::{Result, SliceSink};
use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{Cursor, FullReason};

impl Slices for PgStore {
    fn dialect(&self) -> &'static dyn SqlDialect {
        &types::PgDialect
    }

    fn stream_slice(&self, plan: &SlicePlan, sink: &mut dyn SliceSink) -> Result<Vec<u64>> {
        let streaming = Streaming::new(&self.streams);
        let mut c = self.conn()?;
        // One REPEATABLE READ transaction: counts, rows and the base all come from one
        // snapshot; its first statement records that snapshot as the device's base.
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()?;
        let cursor: i64 = tx
            .query_one(
                "INSERT INTO fieldsync.bases (snap, device) VALUES (pg_current_snapshot(), $1) RETURNING id",
                &[&plan.device],
            )?
            .get(0);
        let (since, refused) = match plan.since {
            None => (None, None),
            Some(since) => match delta_refused(&mut tx, plan.since_owner(), since.raw(), cursor)? {
                None => (Some(since.raw()), None),
                Some(reason) => (None, Some(reason)),
            },
        };
        let n = plan.tables.len();
        let counts = match since {
            Some(_) => vec![0; n],
            None => plan.rows_expected(|t| {
                let binds: Vec<Bind<'_>> = t.binds.iter().map(Bind).collect();
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    binds.iter().map(|b| b as _).collect();
                Ok(tx.query_one(&t.count_sql, &refs)?.get::<_, i64>(0) as u64)
            })?,
        };
        sink.begin(Cursor::from_raw(cursor), &counts, refused)?;
        let delta = since.map(|since| delta_queries(plan, since));
        let mut sent = vec![0; if delta.is_some() { 2 * n } else { n }];
        for (idx, t) in plan.tables.iter().enumerate() {
            match &delta {
                Some(d) => {
                    let lanes = Lanes::Changes { gone: n + idx };
                    let queries: &[&str] = match drive_by(&mut tx, t, &d[idx])? {
                        Drive::Changes => &[&d[idx].changes],
                        Drive::Slice => &[&d[idx].slice_rows, &d[idx].moved_out],
                    };
                    for sql in queries {
                        let (rows, gone) =
                            send_rows(&mut tx, sql, t, idx, lanes, &streaming, sink)?;
                        sent[idx] += rows;
                        sent[n + idx] += gone;
                    }
                }
                None => {
                    let sql = &t.select_sql;
                    sent[idx] = send_rows(&mut tx, sql, t, idx, Lanes::Rows, &streaming, sink)?.0;
                }
            }
        }
        tx.commit()?;
        Ok(sent)
    }

    fn cursor_known(&self, device: &str, cursor: Cursor) -> Result<bool> {
        let mut c = self.conn()?;
        Ok(c.query_opt(
            "SELECT 1 FROM fieldsync.bases WHERE id = $1 AND device = $2 AND xid IS NULL",
            &[&cursor.raw(), &device],
        )?
        .is_some())
    }

    fn prune_history(&self, before: Timestamp) -> Result<u64> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            // The youngest download base handed out before the horizon: every device
            // whose cursor is not older has seen every delete its snapshot sees.
            let horizon: Option<i64> = tx
                .query_one(
                    "SELECT max(id) FROM fieldsync.bases
                     WHERE xid IS NULL AND snap IS NOT NULL AND created_at < $1::text::timestamptz",
                    &[&before.to_string()],
                )?
                .get(0);
            let Some(horizon) = horizon else {
                return Ok(0);
            };
            let removed = tx.execute(
                "DELETE FROM fieldsync.rows r USING fieldsync.bases b
                 WHERE b.id = $1 AND r.deleted AND pg_visible_in_snapshot(r.xid, b.snap)",
                &[&horizon],
            )?;
            tx.execute(
                "UPDATE fieldsync.bases SET snap = NULL WHERE id < $1 AND snap IS NOT NULL",
                &[&horizon],
            )?;
            tx.execute(
                "INSERT INTO fieldsync.meta (key, value) VALUES ('pruned_through', $1)
                 ON CONFLICT (key) DO UPDATE
                 SET value = greatest(meta.value::int8, excluded.value::int8)::text",
                &[&horizon.to_string()],
            )?;
            Ok(removed)
        })
    }
}

/// Why a delta from base `since` would not be right, if it would not: a base this
/// database never handed to the device as a download's (a restore into the same
/// database, a made-up cursor), or one whose snapshot retention forgot.
fn delta_refused(
    tx: &mut postgres::Transaction<'_>,
    device: &str,
    since: i64,
    now: i64,
) -> Result<Option<FullReason>> {
    let row = tx.query_opt(
        "SELECT snap IS NULL FROM fieldsync.bases WHERE id = $1 AND device = $2 AND xid IS NULL",
        &[&since, &device],
    )?;
    let Some(row) = row.filter(|_| since < now) else {
        return Ok(Some(FullReason::CursorAhead));
    };
    let pruned: Option<String> = tx
        .query_opt(
            "SELECT value FROM fieldsync.meta WHERE key = 'pruned_through'",
            &[],
        )?
        .map(|r| r.get(0));
    let before_horizon = pruned
        .and_then(|p| p.parse::<i64>().ok())
        .is_some_and(|p| since < p);
    Ok((row.get::<_, bool>(0) || before_horizon).then_some(FullReason::HistoryPruned))
}

/// What one fetch from the portal may hold, in bytes, while one slice streams: its rows'
/// raw size plus the client's own cost per row ([`row_cost`]). Fetches of a fixed 2,000
/// rows held ~1 MB of narrow rows but of wide rows any size (2,000 rows of 1 MB each:
/// 2 GB). Smaller fetches cost round trips: 256 KiB took a lone 1,000,000-row download
/// 12% longer (BENCHMARKS.md, "PostgreSQL's fetches by bytes").
const FETCH_BYTES: usize = 1024 * 1024;
/// The least a fetch may hold however many slices stream at once.
const LEAST_FETCH_BYTES: usize = 128 * 1024;
/// The first fetch's rows, before any row's size is known.
const FIRST_FETCH_ROWS: usize = 16;
/// The most rows one fetch asks for, however narrow.
const MOST_FETCH_ROWS: usize = 2000;

/// What one fetch may hold with `streams` slices streaming from this server at once:
/// they share [`FETCH_BYTES`], so that the server's memory for fetches stays about the
/// same from one download to a fleet's (eight turns at once held ~16 MB with 1 MiB
/// each). A lone download keeps its big fetches; a fleet's round pays for the smaller
/// ones' round trips with 6–18% more of the server's CPU (BENCHMARKS.md, "Downloads at
/// once").
fn fetch_budget(streams: usize) -> usize {
    (FETCH_BYTES / streams.max(1)).max(LEAST_FETCH_BYTES)
}

/// The client's memory for a row: its raw bytes, the row and its column ranges.
fn row_cost(row: &postgres::Row) -> usize {
    row.raw_size_bytes() + 64 + 24 * row.len()
}

/// Rows for the next fetch: as many of the widest row read so far (`widest`, updated
/// with `fetched`) as `budget` bytes hold, so that a table whose rows widen part
/// way shrinks its fetches from then on.
fn next_fetch_rows(fetched: &[postgres::Row], widest: &mut usize, budget: usize) -> usize {
    for row in fetched {
        *widest = (*widest).max(row_cost(row));
    }
    (budget / (*widest).max(1)).clamp(1, MOST_FETCH_ROWS)
}

/// A slice streaming from the store: counted while it lives.
struct Streaming<'a>(&'a AtomicUsize);

impl<'a> Streaming<'a> {
    fn new(streams: &'a AtomicUsize) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Streaming(streams)
    }

    /// What the next fetch may hold now.
    fn budget(&self) -> usize {
        fetch_budget(self.0.load(Ordering::Relaxed))
    }
}

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Each table's delta queries from the cursor `since` ([`delta_sql`]).
fn delta_queries(plan: &SlicePlan, since: i64) -> Vec<DeltaSql> {
    let base = format!("(SELECT snap FROM fieldsync.bases WHERE id = {since})");
    let name = |i: usize| quote_literal(&plan.tables[i].schema.name);
    // Not seen by the snapshot; what is older than its oldest running
    // transaction it sees all (an index range).
    let unseen =
        format!("r.xid >= pg_snapshot_xmin({base}) AND NOT pg_visible_in_snapshot(r.xid, {base})");
    delta_sql(
        plan,
        &Changed {
            keys: &|i| {
                // Moved since: by a transaction the snapshot does not see.
                format!(
                    "SELECT CAST(r.pk AS {decl}) AS k,
                            CASE WHEN r.moved IS NOT NULL AND NOT pg_visible_in_snapshot(r.moved, {base})
                                 THEN CAST(r.pk AS {decl}) END AS g
                     FROM fieldsync.rows r
                     WHERE r.tbl = {name} AND {unseen}",
                    decl = plan.tables[i].declared[0],
                    name = name(i),
                )
            },
            // By `rows_by_moved`; the writer's bound (implied: a row's writer is never
            // older than its move) keeps `rows_by_xid`'s range where `server init`
            // has not made that index yet.
            moved: &|i| {
                format!(
                    "SELECT CAST(r.pk AS {decl}) AS k, CAST(r.pk AS {decl}) AS g
                     FROM fieldsync.rows r
                     WHERE r.tbl = {name} AND r.moved IS NOT NULL
                       AND r.moved >= pg_snapshot_xmin({base})
                       AND NOT pg_visible_in_snapshot(r.moved, {base})
                       AND r.xid >= pg_snapshot_xmin({base})",
                    decl = plan.tables[i].declared[0],
                    name = name(i),
                )
            },
            key: &|i, key| {
                format!(
                    "EXISTS (SELECT 1 FROM fieldsync.rows r WHERE r.tbl = {} AND r.pk = {} AND {unseen})",
                    name(i),
                    types::key_text(key, &plan.tables[i].declared[0]),
                )
            },
            read: &|i, column| types::read_expr(column, &plan.tables[i].declared[0]),
            null: &|i| format!("CAST(NULL AS {})", plan.tables[i].declared[0]),
        },
    )
}

/// How table `t`'s delta is read ([`choose`]): a plan that reads a table whole
/// (a sequential scan) reads the whole table.
fn drive_by(tx: &mut postgres::Transaction<'_>, t: &TablePlan, d: &DeltaSql) -> Result<Drive> {
    let binds: Vec<Bind<'_>> = t.binds.iter().map(Bind).collect();
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = binds.iter().map(|b| b as _).collect();
    let tx = std::cell::RefCell::new(tx);
    choose(
        d,
        t,
        RowCost::POSTGRES,
        None,
        &mut |sql, bound| {
            let args = if bound { &refs[..] } else { &[] };
            Ok(tx.borrow_mut().query_one(sql, args)?.get(0))
        },
        &mut |sql| {
            let plan = tx.borrow_mut().query(&format!("EXPLAIN {sql}"), &refs)?;
            Ok(!plan
                .iter()
                .any(|step| step.get::<_, &str>(0).contains("Seq Scan")))
        },
    )
}

/// Sends the rows of one query of table `t`, read through a portal, to lane `lane` (and
/// a delta's keys that left to theirs: its query reads the changed key first); returns
/// how many rows and how many keys. A thread of its own reads the next batch while
/// this one is written to the stream, so that PostgreSQL and the stream's encoding
/// work at once instead of in turn. Each fetch holds about its share of
/// [`FETCH_BYTES`] and is handed over only when the writer takes it: two are held at
/// most (one written, the next read or waiting), so memory stays flat whatever the
/// slice's size, its rows' width and the downloads at once.
fn send_rows(
    tx: &mut postgres::Transaction<'_>,
    sql: &str,
    t: &TablePlan,
    lane: usize,
    lanes: Lanes,
    streaming: &Streaming<'_>,
    sink: &mut dyn SliceSink,
) -> Result<(u64, u64)> {
    let mut kinds: Vec<Option<Kind>> = t.declared.iter().map(|d| types::kind(d)).collect();
    if let Lanes::Changes { .. } = lanes {
        // The changed key first, typed as the key column.
        kinds.insert(0, kinds[0]);
    }
    let binds: Vec<Bind<'_>> = t.binds.iter().map(Bind).collect();
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = binds.iter().map(|b| b as _).collect();
    let portal = tx.bind(sql, &refs)?;
    std::thread::scope(|s| {
        // A fetch handed over only when the writer takes it: one read ahead.
        let (batches, arrived) = std::sync::mpsc::sync_channel(0);
        s.spawn(move || {
            let (mut rows, mut widest) = (FIRST_FETCH_ROWS, 0);
            loop {
                let batch = tx.query_portal(&portal, rows as i32);
                if let Ok(b) = &batch {
                    rows = next_fetch_rows(b, &mut widest, streaming.budget());
                }
                let last = !matches!(&batch, Ok(b) if !b.is_empty());
                // The writer stopped (an error, or the device went away): so does this.
                if batches.send(batch).is_err() || last {
                    break;
                }
            }
        });
        // `arrived` is dropped on any return, which ends the reading thread's wait.
        let (mut n, mut gone) = (0u64, 0u64);
        for batch in arrived {
            let batch = batch?;
            for row in &batch {
                let read = |i: usize| types::value_ref(row, i, kinds[i]);
                let first = match lanes {
                    Lanes::Rows => 0,
                    Lanes::Changes { gone: left } => {
                        if matches!(read(1), ValueRef::Null) {
                            let key = read(0);
                            if !matches!(key, ValueRef::Null) {
                                sink.row(left, &mut std::iter::once(key))?;
                                gone += 1;
                            }
                            continue;
                        }
                        1
                    }
                };
                sink.row(lane, &mut (first..kinds.len()).map(read))?;
                n += 1;
            }
        }
        Ok((n, gone))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_streaming_at_once_share_the_fetch_budget() {
        assert_eq!(fetch_budget(1), FETCH_BYTES);
        assert_eq!(fetch_budget(2), FETCH_BYTES / 2);
        assert_eq!(fetch_budget(8), 128 * 1024);
        assert_eq!(fetch_budget(64), LEAST_FETCH_BYTES);
        let streams = AtomicUsize::new(0);
        let first = Streaming::new(&streams);
        assert_eq!(first.budget(), FETCH_BYTES);
        let second = Streaming::new(&streams);
        assert_eq!(first.budget(), FETCH_BYTES / 2);
        drop(second);
        assert_eq!(first.budget(), FETCH_BYTES);
        drop(first);
        assert_eq!(streams.load(Ordering::Relaxed), 0);
    }

    /// A child table's delta does not read the child table while no parent changed
    /// (`asset_id` has no index: its rows under a changed parent are found by reading
    /// it whole), and still finds the children of a parent that entered the slice.
    #[test]
    fn a_child_tables_delta_reads_no_children_while_no_parent_changed() {
        let db = fieldsync_testkit::pg::PgDb::new();
        let store = PgStore::new(&db.url).unwrap();
        crate::Schema::init(&store).unwrap();
        let mut office = db.client();
        office
            .batch_execute(
                "CREATE TABLE assets (id bigint PRIMARY KEY, region text NOT NULL);
                 CREATE TABLE inspections (id bigint PRIMARY KEY,
                     asset_id bigint NOT NULL REFERENCES assets (id), result text);
                 INSERT INTO assets SELECT i, CASE WHEN i <= 10 THEN 'north' ELSE 'south' END
                     FROM generate_series(1, 20) i;
                 INSERT INTO inspections (id, asset_id) SELECT i, 1 + i % 20 FROM generate_series(1, 20000) i;
                 ANALYZE",
            )
            .unwrap();
        let def = crate::delta::tests::put_north_with_inspections(&store);
        let mut plan = crate::delta::tests::plan_for_dev1(&store, &def);
        let mut full = crate::delta::tests::Keys::default();
        store.stream_slice(&plan, &mut full).unwrap();
        plan.since = Some(Cursor::from_raw(full.cursor));
        // How many times the plan of the children's changes read `inspections` whole.
        let scans = |office: &mut postgres::Client| -> i64 {
            let d = delta_queries(&plan, full.cursor);
            let binds: Vec<Bind<'_>> = plan.tables[1].binds.iter().map(Bind).collect();
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                binds.iter().map(|b| b as _).collect();
            // The plan's JSON as its text (a `json` column, read as its bytes).
            struct Json(String);
            impl<'a> postgres::types::FromSql<'a> for Json {
                fn from_sql(
                    _: &postgres::types::Type,
                    raw: &'a [u8],
                ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>>
                {
                    Ok(Json(String::from_utf8(raw.to_vec())?))
                }
                fn accepts(ty: &postgres::types::Type) -> bool {
                    *ty == postgres::types::Type::JSON
                }
            }
            let explained: Json = office
                .query_one(
                    &format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", d[1].changes),
                    &refs,
                )
                .unwrap()
                .get(0);
            let plan: serde_json::Value = serde_json::from_str(&explained.0).unwrap();
            fn walk(node: &serde_json::Value, loops: &mut i64) {
                if node["Node Type"] == "Seq Scan" && node["Relation Name"] == "inspections" {
                    *loops += node["Actual Loops"].as_i64().unwrap();
                }
                for child in node["Plans"].as_array().into_iter().flatten() {
                    walk(child, loops);
                }
            }
            let mut loops = 0;
            walk(&plan[0]["Plan"], &mut loops);
            loops
        };
        assert_eq!(scans(&mut office), 0);
        office
            .batch_execute("UPDATE assets SET region = 'north' WHERE id = 12")
            .unwrap();
        let mut delta = crate::delta::tests::Keys::default();
        store.stream_slice(&plan, &mut delta).unwrap();
        let children = delta.lanes.iter().filter(|(lane, _)| *lane == 1).count();
        assert_eq!(children, 1000, "the inspections of asset 12");
    }

    #[test]
    fn a_table_changed_far_beyond_its_slice_is_read_from_the_slice_by_its_index() {
        let db = fieldsync_testkit::pg::PgDb::new();
        let store = PgStore::new(&db.url).unwrap();
        crate::Schema::init(&store).unwrap();
        let office = std::cell::RefCell::new(db.client());
        crate::delta::tests::from_the_slice_by_its_index(
            &store,
            &|sql| office.borrow_mut().batch_execute(sql).unwrap(),
            "CREATE INDEX assets_by_region ON assets (region COLLATE \"C\")",
            &|plan| {
                let mut c = store.conn().unwrap();
                let mut tx = c
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .start()
                    .unwrap();
                let d = delta_queries(plan, plan.since.unwrap().raw());
                drive_by(&mut tx, &plan.tables[0], &d[0]).unwrap()
            },
        );
    }
}
