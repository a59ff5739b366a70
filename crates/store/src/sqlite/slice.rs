//! The slice stream on SQLite: counts, rows (or a delta's changes) and cursor from one
//! read transaction, the cursor recorded as the device's base; pruning old tombstones.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::SqliteDialect;
use super::{SqliteStore, to_sql_value, value_ref};
use crate::Slices;
use crate::delta::{Changed, DeltaSql, Drive, Lanes, RowCost, choose, delta_sql};
use crate::dialect::SqlDialect;
use crate::plan::{SlicePlan, TablePlan, quote_literal};
use crate::{Result, SliceSink};
use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{Cursor, FullReason};

impl SqliteStore {
    /// Records a download's cursor as a base `device` may send changes on, by a second
    /// connection (the download's read snapshot stays open). An office transaction
    /// holding the write lock must not stall the download: then a thread records it
    /// as soon as the lock is free (the device needs the base only at its next send).
    fn record_base(&self, device: &str, cursor: i64) -> Result<()> {
        const SQL: &str =
            "INSERT OR IGNORE INTO fieldsync_bases (device, low, high, at) VALUES (?1, ?2, ?2, ?3)";
        let conn = self.conn()?;
        conn.busy_timeout(Duration::from_millis(200))?;
        let at = super::now();
        match conn.execute(SQL, params![device, cursor, at]) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                let (store, device) = (SqliteStore::new(self.path.clone()), device.to_string());
                std::thread::spawn(move || {
                    let recorded = store.conn().and_then(|c| {
                        c.busy_timeout(Duration::from_secs(600))?;
                        Ok(c.execute(SQL, params![device, cursor, at])?)
                    });
                    if let Err(e) = recorded {
                        eprintln!("fieldsync server: recording the base of a download: {e}");
                    }
                });
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The page cache of a full download's connection, KiB.
const SCAN_CACHE_KIB: i64 = 256;
/// The page cache of a delta's connection, KiB: a quarter of SQLite's default. Each
/// connection has its own (`.cargo/config.toml`); with 2 MB the server under 200
/// devices syncing at once peaked 13 MB higher at the same CPU (BENCHMARKS.md, "A page
/// cache per connection").
const PROBE_CACHE_KIB: i64 = 512;

impl Slices for SqliteStore {
    fn dialect(&self) -> &'static dyn SqlDialect {
        &SqliteDialect
    }

    fn stream_slice(&self, plan: &SlicePlan, sink: &mut dyn SliceSink) -> Result<Vec<u64>> {
        let mut conn = self.conn()?;
        // A full download reads each page once, in order: a page cache fills with
        // pages never read again (eight downloads at once held 16 MB of them). A delta
        // probes rows by key, over and over the same inner pages: it keeps a cache for
        // them (a page it misses comes from the system's file cache). The connection
        // may have streamed before: both set.
        let cache_kib = if plan.since.is_none() {
            SCAN_CACHE_KIB
        } else {
            PROBE_CACHE_KIB
        };
        conn.pragma_update(None, "cache_size", -cache_kib)?;
        // One read transaction: counts, rows and cursor all come from one snapshot.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
        let cursor: i64 = tx.query_row(
            "SELECT coalesce(max(version), 0) FROM fieldsync_rows",
            [],
            |r| r.get(0),
        )?;
        let (since, refused) = match plan.since {
            None => (None, None),
            Some(since) => match delta_refused(&tx, plan.since_owner(), since.raw(), cursor)? {
                None => (Some(since.raw()), None),
                Some(reason) => (None, Some(reason)),
            },
        };
        let n = plan.tables.len();
        let counts = match since {
            Some(_) => vec![0; n],
            None => plan.rows_expected(|t| {
                let binds: Vec<_> = t.binds.iter().map(to_sql_value).collect();
                Ok(tx.query_row(
                    &t.count_sql,
                    rusqlite::params_from_iter(binds.iter()),
                    |r| r.get::<_, i64>(0),
                )? as u64)
            })?,
        };
        self.record_base(&plan.device, cursor)?;
        sink.begin(Cursor::from_raw(cursor), &counts, refused)?;
        let delta = since.map(|since| delta_queries(plan, since));
        let mut sent = vec![0; if delta.is_some() { 2 * n } else { n }];
        for (idx, t) in plan.tables.iter().enumerate() {
            let width = t.schema.columns.len();
            match (&delta, since) {
                (Some(d), Some(since)) => {
                    let lanes = Lanes::Changes { gone: n + idx };
                    let queries: &[&str] = match drive_by(&tx, t, &d[idx], cursor - since)? {
                        Drive::Changes => &[&d[idx].changes],
                        Drive::Slice => &[&d[idx].slice_rows, &d[idx].moved_out],
                    };
                    for sql in queries {
                        let (rows, gone) = send_rows(&tx, sql, &t.binds, width, idx, lanes, sink)?;
                        sent[idx] += rows;
                        sent[n + idx] += gone;
                    }
                }
                _ => {
                    let lanes = Lanes::Rows;
                    sent[idx] = send_rows(&tx, &t.select_sql, &t.binds, width, idx, lanes, sink)?.0;
                }
            }
        }
        tx.commit()?;
        Ok(sent)
    }

    fn cursor_known(&self, device: &str, cursor: Cursor) -> Result<bool> {
        let conn = self.conn()?;
        let now: i64 = conn.query_row(
            "SELECT coalesce(max(version), 0) FROM fieldsync_rows",
            [],
            |r| r.get(0),
        )?;
        cursor_known(&conn, device, cursor.raw(), now)
    }

    fn prune_history(&self, before: Timestamp) -> Result<u64> {
        let mut conn = self.conn()?;
        // Nothing handed out before the horizon: nothing to prune, and no write lock
        // taken from the office for it.
        let any: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM fieldsync_bases WHERE low = high AND at < ?1)",
            [before.to_string()],
            |r| r.get(0),
        )?;
        if !any {
            return Ok(0);
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // The youngest cursor handed out before the horizon: every device whose cursor
        // is not older has seen every delete up to it.
        let horizon: Option<i64> = tx.query_row(
            "SELECT max(high) FROM fieldsync_bases WHERE low = high AND at < ?1",
            [before.to_string()],
            |r| r.get(0),
        )?;
        let Some(horizon) = horizon else {
            return Ok(0);
        };
        // The row holding the highest version stays: the next version is one past it,
        // and a version handed out once is never handed out again.
        let removed = tx.execute(
            "DELETE FROM fieldsync_rows WHERE deleted = 1 AND version <= ?1
               AND version < (SELECT max(version) FROM fieldsync_rows)",
            [horizon],
        )?;
        tx.execute(
            "INSERT INTO fieldsync_meta (key, value) VALUES ('pruned_through', ?1)
             ON CONFLICT (key) DO UPDATE SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
            [horizon.to_string()],
        )?;
        tx.commit()?;
        Ok(removed as u64)
    }
}

/// Whether `cursor` is a download's cursor handed to `device`, within the history
/// (the highest version `now`).
fn cursor_known(conn: &rusqlite::Connection, device: &str, cursor: i64, now: i64) -> Result<bool> {
    let handed: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM fieldsync_bases WHERE device = ?1 AND high = ?2 AND low = ?2)",
        params![device, cursor],
        |r| r.get(0),
    )?;
    Ok(handed && cursor <= now)
}

/// Each table's delta queries from version `since` ([`delta_sql`]).
fn delta_queries(plan: &SlicePlan, since: i64) -> Vec<DeltaSql> {
    let name = |i: usize| quote_literal(&plan.tables[i].schema.name);
    delta_sql(
        plan,
        &Changed {
            keys: &|i| {
                format!(
                    "SELECT r.pk AS k, CASE WHEN r.moved > {since} THEN r.pk END AS g
                     FROM fieldsync_rows r WHERE r.tbl = {} AND r.version > {since}",
                    name(i)
                )
            },
            // Within the range of versions since the cursor, in the index that has
            // both (a partial index of the moved keys would hold every key after a
            // restamp, and SQLite may seek it by the wrong one of two lower bounds).
            moved: &|i| {
                format!(
                    "SELECT r.pk AS k, r.pk AS g FROM fieldsync_rows r
                     WHERE r.tbl = {} AND r.version > {since} AND r.moved > {since}",
                    name(i)
                )
            },
            // `+key`: compared as stored, so the search is by fieldsync_rows' key
            // (the table's key affinity would convert `r.pk` instead).
            key: &|i, key| {
                format!(
                    "EXISTS (SELECT 1 FROM fieldsync_rows r WHERE r.tbl = {} AND r.pk = +{key} AND r.version > {since})",
                    name(i)
                )
            },
            read: &|_, column| column.to_string(),
            null: &|_| "NULL".to_string(),
        },
    )
}

/// How table `t`'s delta is read ([`choose`]): a plan step that scans (the table, or
/// a whole index) reads the whole table. `versions`: how many versions were handed out
/// since the cursor, as many as the keys changed since (each office or device write
/// stamps its key with a version of its own). Tracking a table anew stamps all its keys
/// with one version: the bound is then short, and the delta takes the changed keys' way,
/// right but slower, until the device's next sync.
fn drive_by(
    tx: &rusqlite::Transaction<'_>,
    t: &TablePlan,
    d: &DeltaSql,
    versions: i64,
) -> Result<Drive> {
    let binds: Vec<_> = t.binds.iter().map(to_sql_value).collect();
    let binds = || rusqlite::params_from_iter(binds.iter());
    choose(
        d,
        t,
        RowCost::SQLITE,
        Some(versions),
        &mut |sql, bound| {
            Ok(if bound {
                tx.query_row(sql, binds(), |r| r.get(0))?
            } else {
                tx.query_row(sql, [], |r| r.get(0))?
            })
        },
        &mut |sql| {
            let mut plan = tx.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let steps = plan
                .query_map(binds(), |r| r.get::<_, String>(3))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(!steps.iter().any(|step| step.starts_with("SCAN ")))
        },
    )
}

/// Why a delta from `since` would not be right, if it would not: a cursor this
/// database never handed to the device or past its history (a restore without
/// `admin epoch reset`), or older than the pruned history.
fn delta_refused(
    tx: &rusqlite::Transaction<'_>,
    device: &str,
    since: i64,
    now: i64,
) -> Result<Option<FullReason>> {
    if !cursor_known(tx, device, since, now)? {
        return Ok(Some(FullReason::CursorAhead));
    }
    let pruned: Option<i64> = tx
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM fieldsync_meta WHERE key = 'pruned_through'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(pruned
        .filter(|p| since < *p)
        .map(|_| FullReason::HistoryPruned))
}

/// Sends the rows of one query to lane `lane` (and a delta's keys that left to theirs);
/// returns how many rows and how many keys.
fn send_rows(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    binds: &[fieldsync_proto::Value],
    width: usize,
    lane: usize,
    lanes: Lanes,
    sink: &mut dyn SliceSink,
) -> Result<(u64, u64)> {
    let binds: Vec<_> = binds.iter().map(to_sql_value).collect();
    let mut stmt = tx.prepare(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(binds.iter()))?;
    let (mut n, mut gone) = (0u64, 0u64);
    while let Some(row) = rows.next()? {
        // The statement selects exactly the columns read here.
        let first = match lanes {
            Lanes::Rows => 0,
            Lanes::Changes { gone: left } => {
                if row.get_ref_unwrap(1) == rusqlite::types::ValueRef::Null {
                    let key = row.get_ref_unwrap(0);
                    if key != rusqlite::types::ValueRef::Null {
                        sink.row(left, &mut std::iter::once(value_ref(key)))?;
                        gone += 1;
                    }
                    continue;
                }
                1
            }
        };
        sink.row(
            lane,
            &mut (first..first + width).map(|i| value_ref(row.get_ref_unwrap(i))),
        )?;
        n += 1;
    }
    Ok((n, gone))
}

#[cfg(test)]
mod tests {
    use fieldsync_testkit::TempDir;

    use super::*;
    use crate::Catalog as _;
    use crate::Tracking;
    use crate::delta::tests::{
        from_the_slice_by_its_index, plan_for_dev1, put_north, put_north_with_inspections,
    };
    use crate::sqlite::tests::initialised;
    use fieldsync_proto::task::TaskDef;

    /// A main database in `dir` with a tracked table `assets` of `rows` rows (`id`,
    /// `region`, then `columns`), the first ten in the north and the rest in the south
    /// (`then` run before the insert), task `north` planned for `dev1`, and the last
    /// version before the office writes again.
    fn north_among(
        dir: &TempDir,
        rows: i64,
        columns: &str,
        then: &str,
    ) -> (SqliteStore, SlicePlan, i64) {
        let store = initialised(dir, "main.sqlite");
        let office = store.conn().unwrap();
        office
            .execute_batch(&format!(
                "CREATE TABLE assets (id INTEGER PRIMARY KEY, region TEXT NOT NULL{columns});
                 {then}
                 WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {rows})
                 INSERT INTO assets (id, region) SELECT i, CASE WHEN i <= 10 THEN 'north' ELSE 'south' END FROM k;"
            ))
            .unwrap();
        store.track_table("assets").unwrap();
        let plan = plan_for_dev1(&store, &put_north(&store));
        let since: i64 = office
            .query_row("SELECT max(version) FROM fieldsync_rows", [], |r| r.get(0))
            .unwrap();
        drop(office);
        (store, plan, since)
    }

    /// The SQLite steps of reading a table's delta from its slice, 3 of its rows
    /// changed since the cursor, the table tracked with `rows` rows (every key stamped
    /// as moved then).
    fn steps_of_a_slice_delta(rows: i64) -> u64 {
        use rusqlite::StatementStatus;
        let dir = TempDir::new("steps");
        let (store, plan, since) = north_among(
            &dir,
            rows,
            "",
            "CREATE INDEX assets_by_region ON assets (region);",
        );
        let office = store.conn().unwrap();
        office
            .execute_batch(
                "UPDATE assets SET region = 'south' WHERE id = 1;
                 UPDATE assets SET region = 'north' WHERE id = 11;
                 DELETE FROM assets WHERE id = 12;",
            )
            .unwrap();
        let d = delta_queries(&plan, since);
        let binds: Vec<_> = plan.tables[0].binds.iter().map(to_sql_value).collect();
        let mut steps = 0;
        for sql in [&d[0].slice_rows, &d[0].moved_out] {
            let mut stmt = office.prepare(sql).unwrap();
            let n = stmt
                .query_map(rusqlite::params_from_iter(binds.iter()), |_| Ok(()))
                .unwrap()
                .count();
            assert!(n > 0, "{sql}");
            steps += stmt.get_status(StatementStatus::VmStep) as u64;
        }
        steps
    }

    /// A delta read from the slice costs the slice and the keys moved since the
    /// cursor, not the table: not after a restamp either, when every key of the table
    /// counts as moved once.
    #[test]
    fn a_delta_from_the_slice_reads_what_moved_since_not_every_key_ever_moved() {
        let (small, large) = (
            steps_of_a_slice_delta(2_000),
            steps_of_a_slice_delta(40_000),
        );
        assert!(
            large < small + small / 2,
            "{small} steps with 2,000 rows, {large} with 40,000"
        );
    }

    /// A delta read from the changed keys reads out the rows to send and the keys that
    /// may have left, not the keys changed elsewhere in the table (a fleet's sync finds
    /// every other device's changes among them).
    #[test]
    fn a_delta_from_the_changes_reads_out_nothing_for_rows_changed_outside_the_slice() {
        let dir = TempDir::new("changes");
        let (store, plan, since) = north_among(&dir, 1000, ", notes TEXT", "");
        let office = store.conn().unwrap();
        office
            .execute_batch(
                "UPDATE assets SET notes = 'checked';
                 UPDATE assets SET region = 'south' WHERE id = 1;
                 DELETE FROM assets WHERE id = 12;",
            )
            .unwrap();
        let d = delta_queries(&plan, since);
        let (_, read) = read_changes::<i64>(&office, &d[0].changes, &plan.tables[0]);
        // Nine rows of the north to send; 1 moved south and 12 deleted, keys that may
        // have left; none of the 989 other rows changed in the south.
        let mut expected: Vec<(Option<i64>, Option<i64>)> =
            (2..=10).map(|id| (None, Some(id))).collect();
        expected.extend([(Some(1), None), (Some(12), None)]);
        expected.sort();
        assert_eq!(read, expected);
    }

    /// A row of a changes query: the key that left, the key of the row to send.
    type KeysRead<K = String> = (Option<K>, Option<K>);

    /// The SQLite steps of changes query `sql` of table `t`, and its rows (the key
    /// that left, the key of the row to send), sorted.
    fn read_changes<K: rusqlite::types::FromSql + Ord>(
        conn: &rusqlite::Connection,
        sql: &str,
        t: &TablePlan,
    ) -> (u64, Vec<KeysRead<K>>) {
        let binds: Vec<_> = t.binds.iter().map(to_sql_value).collect();
        let mut stmt = conn.prepare(sql).unwrap();
        let mut read: Vec<KeysRead<K>> = stmt
            .query_map(rusqlite::params_from_iter(binds.iter()), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        read.sort();
        (
            stmt.get_status(rusqlite::StatementStatus::VmStep) as u64,
            read,
        )
    }

    /// The SQLite steps of the changes query of `inspections`, a child of `assets`
    /// (by `asset_id`, not indexed, as office schemas often leave it) with `children`
    /// rows spread over twenty assets, ten of them in the north, after `office` ran;
    /// and the keys it read (the gone lane's, then the rows').
    fn child_delta(children: i64, office_sql: &str) -> (u64, Vec<KeysRead>) {
        let dir = TempDir::new("child");
        let store = initialised(&dir, "main.sqlite");
        let office = store.conn().unwrap();
        office
            .execute_batch(&format!(
                "CREATE TABLE assets (id INTEGER PRIMARY KEY, region TEXT NOT NULL);
                 CREATE TABLE inspections (id TEXT PRIMARY KEY,
                     asset_id INTEGER NOT NULL REFERENCES assets (id), result TEXT);
                 WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 20)
                 INSERT INTO assets (id, region) SELECT i, CASE WHEN i <= 10 THEN 'north' ELSE 'south' END FROM k;
                 WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {children})
                 INSERT INTO inspections (id, asset_id) SELECT printf('i%06d', i), 1 + i % 20 FROM k;"
            ))
            .unwrap();
        let def = put_north_with_inspections(&store);
        let plan = plan_for_dev1(&store, &def);
        let since: i64 = office
            .query_row("SELECT max(version) FROM fieldsync_rows", [], |r| r.get(0))
            .unwrap();
        office.execute_batch(office_sql).unwrap();
        let d = delta_queries(&plan, since);
        read_changes(&office, &d[1].changes, &plan.tables[1])
    }

    /// A child table's delta looks for children of changed parents only when some
    /// parent changed: with nothing changed it does not read the child table (a crew's
    /// idle sync read every inspection of the database, 28 ms of the server's CPU at
    /// 500,000 of them); the children of a parent that entered the slice still come.
    #[test]
    fn a_child_tables_delta_reads_no_children_while_no_parent_changed() {
        let (small, none) = child_delta(1_000, "");
        let (large, _) = child_delta(20_000, "");
        assert_eq!(none, Vec::new());
        assert!(
            large < small + 100,
            "{small} steps with 1,000 children, {large} with 20,000"
        );
        let (_, entered) = child_delta(
            40,
            "UPDATE assets SET region = 'north' WHERE id = 12; UPDATE inspections SET result = 'ok' WHERE id = 'i000001';",
        );
        let mut want: Vec<KeysRead> = vec![
            (None, Some("i000001".into())),
            (None, Some("i000011".into())),
            (None, Some("i000031".into())),
        ];
        want.sort();
        assert_eq!(entered, want);
    }

    /// Three tables in a chain (assets, inspections under them, photos under those):
    /// an asset that enters the slice brings its inspections and their photos, found
    /// through the chain, by both ways of reading a delta.
    #[test]
    fn an_asset_entering_the_slice_brings_its_grandchildren() {
        let dir = TempDir::new("chain");
        let store = initialised(&dir, "main.sqlite");
        let office = store.conn().unwrap();
        office
            .execute_batch(
                "CREATE TABLE assets (id INTEGER PRIMARY KEY, region TEXT NOT NULL);
                 CREATE TABLE inspections (id INTEGER PRIMARY KEY, asset_id INTEGER NOT NULL);
                 CREATE TABLE photos (id INTEGER PRIMARY KEY, inspection_id INTEGER NOT NULL);
                 INSERT INTO assets VALUES (1, 'north'), (2, 'south');
                 INSERT INTO inspections VALUES (10, 1), (20, 2), (21, 2);
                 INSERT INTO photos VALUES (100, 10), (200, 20), (201, 21), (202, 21);",
            )
            .unwrap();
        for t in ["assets", "inspections", "photos"] {
            store.track_table(t).unwrap();
        }
        let def = TaskDef::from_toml(
            "name = \"north\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = 'north'\"\n\
             [[tables]]\nname = \"inspections\"\nparent = { table = \"assets\", key = \"asset_id\" }\n\
             [[tables]]\nname = \"photos\"\nparent = { table = \"inspections\", key = \"inspection_id\" }\n",
        )
        .unwrap();
        store.task_put(&def, "h", Timestamp::now()).unwrap();
        let plan = plan_for_dev1(&store, &def);
        let since: i64 = office
            .query_row("SELECT max(version) FROM fieldsync_rows", [], |r| r.get(0))
            .unwrap();
        office
            .execute_batch("UPDATE assets SET region = 'north' WHERE id = 2")
            .unwrap();
        let d = delta_queries(&plan, since);
        let sent = |i: usize| -> Vec<i64> {
            let (_, read) = read_changes::<i64>(&office, &d[i].changes, &plan.tables[i]);
            let (_, rows) = read_changes::<i64>(&office, &d[i].slice_rows, &plan.tables[i]);
            let from_slice: Vec<i64> = rows
                .into_iter()
                .map(|(_, k)| k.expect("a slice row's key"))
                .collect();
            let from_changes: Vec<i64> = read.into_iter().filter_map(|(_, k)| k).collect();
            assert_eq!(from_changes, from_slice, "table {i}, the two ways");
            from_changes
        };
        assert_eq!(sent(0), vec![2]);
        assert_eq!(sent(1), vec![20, 21]);
        assert_eq!(sent(2), vec![200, 201, 202]);
    }

    #[test]
    fn a_table_changed_far_beyond_its_slice_is_read_from_the_slice_by_its_index() {
        let dir = TempDir::new("drive");
        let store = initialised(&dir, "main.sqlite");
        let office = store.conn().unwrap();
        from_the_slice_by_its_index(
            &store,
            &|sql| office.execute_batch(sql).unwrap(),
            "CREATE INDEX assets_by_region ON assets (region)",
            &|plan| {
                let mut conn = store.conn().unwrap();
                let tx = conn.transaction().unwrap();
                let since = plan.since.unwrap().raw();
                let now: i64 = tx
                    .query_row("SELECT max(version) FROM fieldsync_rows", [], |r| r.get(0))
                    .unwrap();
                let d = delta_queries(plan, since);
                drive_by(&tx, &plan.tables[0], &d[0], now - since).unwrap()
            },
        );
    }
}
