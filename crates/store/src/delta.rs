//! The SQL of a delta, engine-neutral: which rows of each table a download from a
//! cursor sends, and which keys it names as gone. Each engine says only what "changed
//! since the cursor" is ([`Changed`]: the table's changed keys, and whether one key
//! changed): on SQLite a higher row version, on PostgreSQL a writing transaction
//! the cursor's snapshot does not see.
//!
//! A row is sent when it is in the slice now and it, or a row of its parent chain,
//! changed since the cursor: a row that entered the slice because its parent did is
//! sent although it did not change itself. A key is named gone when its row may have
//! moved since the cursor and is not in the slice now (deleted, filtered out, moved
//! under a parent outside the slice); rows that left only because their parent left
//! are the device's to remove with the parent. "May have moved": a delete, a key
//! change or an update of a column some task filters or links parents by (the row's
//! `moved` version or transaction, kept by each engine's triggers). A row whose
//! watched columns did not change and that is not in the slice now was not in it at
//! the cursor either, so it is not on the device. Both are over-approximations that
//! are right to apply: a row sent again is written again, a gone key the device does
//! not hold removes nothing.
//!
//! Each table has two ways to both ([`DeltaSql`]), and the engine takes the cheaper:
//! from the changed keys (each looked up in its table, and the keys under a changed
//! parent chain), or from the slice (each of its rows looked up in the change record,
//! and the keys that may have moved looked up in the table).

use crate::Result;
use crate::plan::{SlicePlan, TablePlan, quote_ident};

/// One table's delta, two ways to the same rows and keys; each query binds the table's
/// `binds` and nothing else, and reads as a [`Lanes::Changes`]: its first column a key
/// that left (read as [`Changed::read`] renders it) or NULL, then the table's columns, NULL
/// when the row is not in the slice now. A row whose second column (the table's key)
/// is not NULL is a row to send; otherwise its first column, when not NULL, is a key
/// that left.
///
/// `changes` is driven by the keys changed since the cursor: each is looked up in its
/// table, so it costs what changed, in the whole table (every device's changes). The
/// pair `slice_rows` and `moved_out` is driven by the slice: its rows, each looked up in
/// the engine's change record, and the keys that may have moved, each looked up in the
/// table; it costs the slice, and is the cheaper way when far more of the table changed
/// than the slice holds (a fleet, each device on its own region). The engine chooses.
pub(crate) struct DeltaSql {
    pub changes: String,
    pub slice_rows: String,
    pub moved_out: String,
    /// The keys changed since the cursor (a query; no binds).
    pub changed: String,
}

/// What a slice query's rows are, for the engine reading them: the table's rows, or a
/// delta's changes ([`DeltaSql`]), whose keys that left go to lane `gone`.
#[derive(Clone, Copy)]
pub(crate) enum Lanes {
    Rows,
    Changes { gone: usize },
}

/// Which of a table's two ways a delta reads ([`DeltaSql`]): each engine chooses per
/// table and download, by counts it can take cheaply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Drive {
    /// `changes`: from the keys changed since the cursor.
    Changes,
    /// `slice_rows` then `moved_out`: from the slice.
    Slice,
}

impl Drive {
    /// Fewer keys changed than this: they are read from the changes whatever the slice
    /// (a few milliseconds at most, and no counting of the slice).
    pub const SLICE_MIN_CHANGED: i64 = 1000;

    /// The way every table's delta is read when the server's environment sets
    /// `FIELDSYNC_DELTA_DRIVE` to `changes` or `slice` (the tests run both; an operator
    /// can rule out the choice); any other value is said once and ignored.
    pub fn forced() -> Option<Drive> {
        static FORCED: std::sync::OnceLock<Option<Drive>> = std::sync::OnceLock::new();
        *FORCED.get_or_init(|| match std::env::var("FIELDSYNC_DELTA_DRIVE").as_deref() {
            Err(_) | Ok("") => None,
            Ok("changes") => Some(Drive::Changes),
            Ok("slice") => Some(Drive::Slice),
            Ok(other) => {
                eprintln!(
                    "fieldsync server: FIELDSYNC_DELTA_DRIVE={other:?} is neither `changes` nor `slice`; each delta chooses"
                );
                None
            }
        })
    }
}

/// What a row of the slice checked against the change record costs, in tenths of a
/// changed key looked up in the table: each engine's own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowCost(i64);

impl RowCost {
    /// SQLite finds a slice row's key in the filter's index and searches the change
    /// record with it, without reading the row; a changed key's entry leads to a
    /// search of the table and its row. Measured on a fleet's main database
    /// (BENCHMARKS.md, "A delta's choice settled by SQLite's bound"): the two ways
    /// cost the same at about 1.3 changed keys a slice row.
    pub const SQLITE: RowCost = RowCost(13);
    /// PostgreSQL reads each slice row from the table as well (its index scan goes to
    /// the row): its index entry, its row and a search of the change record, against
    /// a changed key's entry and a search of the table (an estimate by the searches).
    pub const POSTGRES: RowCost = RowCost(20);

    /// What `rows` slice rows cost, in changed keys (rounded up).
    fn of(self, rows: i64) -> i64 {
        (rows * self.0 + 9) / 10
    }

    /// How many slice rows cost `keys` changed keys (rounded up).
    fn rows_for(self, keys: i64) -> i64 {
        (keys * 10 + self.0 - 1) / self.0
    }
}

/// How table `t`'s delta is read ([`Drive`]): from the slice when the table changed
/// by more keys than its slice's rows cost (`cost`, [`RowCost`]; and by at
/// least [`Drive::SLICE_MIN_CHANGED`]) and the engine finds the slice's rows by an
/// index (a slice found by scanning the table costs the whole table). `count(sql)`: the
/// one number `sql` selects, with the table's binds when `bound`; `searches(sql)`:
/// whether the engine's plan for `sql` (with the table's binds) reads no table or index
/// whole; `most`, at least as many as changed, when the engine knows it without
/// counting.
///
/// Both counts go up together by steps of four, so that neither is counted much past
/// the other: what the choice costs stays a small part of the cheaper way, whichever it
/// is (a million-row slice with a thousand changes, a fleet's hundred thousand changes
/// with a ten-thousand-row slice).
pub(crate) fn choose(
    d: &DeltaSql,
    t: &TablePlan,
    cost: RowCost,
    most: Option<i64>,
    count: &mut dyn FnMut(&str, bool) -> Result<i64>,
    searches: &mut dyn FnMut(&str) -> Result<bool>,
) -> Result<Drive> {
    if let Some(forced) = Drive::forced() {
        return Ok(forced);
    }
    if most.is_some_and(|most| most < Drive::SLICE_MIN_CHANGED) {
        return Ok(Drive::Changes);
    }
    // At most `limit` of the changed keys, and of the slice's rows.
    let changed = |count: &mut dyn FnMut(&str, bool) -> Result<i64>, limit: i64| {
        count(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM ({}) o LIMIT {limit}) c",
                d.changed
            ),
            false,
        )
    };
    let in_slice = |count: &mut dyn FnMut(&str, bool) -> Result<i64>, limit: i64| {
        count(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT {limit}) s",
                quote_ident(&t.schema.name),
                t.condition,
            ),
            true,
        )
    };
    if changed(count, Drive::SLICE_MIN_CHANGED)? < Drive::SLICE_MIN_CHANGED
        || !searches(&t.count_sql)?
    {
        return Ok(Drive::Changes);
    }
    // With the engine's bound on the changes, the slice is counted once, as far as
    // it could be cheaper.
    let mut bound = cost.rows_for(most.unwrap_or(Drive::SLICE_MIN_CHANGED));
    loop {
        let slice = in_slice(count, bound + 1)?;
        if slice <= bound {
            // The whole slice counted: the changes only as far as the answer, and not
            // at all when the engine's bound gives it.
            let paid = cost.of(slice);
            let more = most.is_none_or(|most| most > paid) && changed(count, paid + 1)? > paid;
            return Ok(if more { Drive::Slice } else { Drive::Changes });
        }
        // More than `bound` rows in the slice: the slice is cheaper only if more keys
        // changed than that many rows cost.
        let paid = cost.of(bound);
        if most.is_some_and(|most| most <= paid) || changed(count, paid + 1)? <= paid {
            return Ok(Drive::Changes);
        }
        bound *= 4;
    }
}

/// What "changed since the cursor" is on one engine, for [`delta_sql`].
pub(crate) struct Changed<'a> {
    /// `keys(i)`: a query with two columns, `k`, the keys of table `i` changed since
    /// the cursor, typed as its key column, each key once, and `g`, the same key when
    /// its row may have moved since the cursor (else NULL).
    pub keys: &'a dyn Fn(usize) -> String,
    /// `moved(i)`: the same two columns for the keys of table `i` that may have moved
    /// since the cursor (`g` never NULL): the rows of `keys(i)` whose `g` is not NULL,
    /// found without reading the others.
    pub moved: &'a dyn Fn(usize) -> String,
    /// `key(i, expr)`: the condition that key `expr` of table `i` (an expression of the
    /// key column's type) changed since the cursor.
    pub key: &'a dyn Fn(usize, &str) -> String,
    /// `read(i, column)`: how the engine reads key column `column` of table `i`.
    pub read: &'a dyn Fn(usize, &str) -> String,
    /// `null(i)`: a NULL typed as table `i`'s key.
    pub null: &'a dyn Fn(usize) -> String,
}

/// The delta queries of every table of `plan`.
pub(crate) fn delta_sql(plan: &SlicePlan, changed: &Changed<'_>) -> Vec<DeltaSql> {
    (0..plan.tables.len())
        .map(|i| {
            let t = &plan.tables[i];
            let table = quote_ident(&t.schema.name);
            let pk = quote_ident(&t.schema.primary_key);
            let own = (changed.keys)(i);
            let gone = (changed.read)(i, "c.g");
            let (list, cond) = (&t.select_list, &t.condition);
            let mut keys = format!("SELECT k, g FROM ({own}) o");
            // Under a parent whose chain changed, not changed themselves: sent when in
            // the slice, never named gone (a row out of the slice under a changed
            // parent was not on the device).
            let alias = format!("a{i}");
            let under = under_changed_parents(plan, i, changed.keys);
            if let Some(under) = &under {
                keys.push_str(&format!(
                    " UNION ALL SELECT {alias}.{pk}, NULL {} \
                     AND NOT EXISTS (SELECT 1 FROM ({own}) o2 WHERE o2.k = {alias}.{pk})",
                    under.children(i, &table, &alias),
                ));
            }
            // The slice's condition is written once in each query (SQLite's filter
            // parameters are positional): the table is not aliased where it applies.
            let mut touched = (changed.key)(i, &format!("{table}.{pk}"));
            if let Some(under) = &under {
                touched = format!("{touched} OR {}", under.condition(&table));
            }
            DeltaSql {
                // A changed key whose row is not in the slice and cannot have left it
                // says nothing to the device: such rows are not read out at all (a
                // fleet's sync finds every other device's changes here).
                changes: format!(
                    "SELECT {gone}, {list} FROM ({keys}) c LEFT JOIN {table} ON {table}.{pk} = c.k AND {cond} \
                     WHERE c.g IS NOT NULL OR {table}.{pk} IS NOT NULL"
                ),
                slice_rows: format!(
                    "SELECT {}, {list} FROM {table} WHERE {cond} AND ({touched})",
                    (changed.read)(i, &(changed.null)(i)),
                ),
                moved_out: format!(
                    "SELECT {gone}, {list} FROM ({moved}) c LEFT JOIN {table} ON {table}.{pk} = c.k AND {cond} \
                     WHERE {table}.{pk} IS NULL",
                    moved = (changed.moved)(i),
                ),
                changed: own,
            }
        })
        .collect()
}

/// The keys of table `i` whose row or a row of whose parent chain changed.
fn affected(plan: &SlicePlan, i: usize, changed: &dyn Fn(usize) -> String) -> String {
    let own = format!("SELECT k FROM ({}) ch{i}", changed(i));
    let Some(under) = under_changed_parents(plan, i, changed) else {
        return own;
    };
    let t = &plan.tables[i];
    let alias = format!("a{i}");
    format!(
        "{own} UNION SELECT {alias}.{pk} {}",
        under.children(i, &quote_ident(&t.schema.name), &alias),
        pk = quote_ident(&t.schema.primary_key),
    )
}

/// The rows of a table under a parent whose row or parent chain changed: the table's
/// column that names the parent, and the parent keys affected.
struct UnderChanged {
    parent_key: String,
    parents: String,
}

impl UnderChanged {
    /// The condition that row `row` (the table, or an alias of it) is under one of
    /// the parents.
    fn condition(&self, row: &str) -> String {
        format!("{row}.{} IN ({})", self.parent_key, self.parents)
    }

    /// `FROM … WHERE …` of table `i`'s rows under one of the parents, the table named
    /// `alias` (more conditions may follow with `AND`). The table is read only when
    /// some parent is affected: the one-row guard before it (a cross join, which
    /// SQLite keeps as the outer loop) holds no row otherwise. Where the key to the
    /// parent has no index, the children are found by reading the whole table, which
    /// every delta did before, whether a parent changed or not (a sync with nothing
    /// changed: 28 ms of a SQLite server's CPU with 500,000 inspections). A term of
    /// the `WHERE` alone would not do: SQLite evaluates a term with a subquery per row.
    fn children(&self, i: usize, table: &str, alias: &str) -> String {
        format!(
            "FROM (SELECT 1 AS one WHERE EXISTS ({parents})) g{i} CROSS JOIN {table} {alias} WHERE {}",
            self.condition(alias),
            parents = self.parents,
        )
    }
}

/// How table `i`'s rows are found under a parent whose row or parent chain changed;
/// `None` for a table without a parent in the slice.
fn under_changed_parents(
    plan: &SlicePlan,
    i: usize,
    changed: &dyn Fn(usize) -> String,
) -> Option<UnderChanged> {
    let parent = plan.tables[i].schema.parent.as_ref()?;
    let p = plan.table_index(&parent.table)?;
    // A task's parent chain has no cycles: `TaskDef::check` refuses them.
    Some(UnderChanged {
        parent_key: quote_ident(&parent.key),
        parents: affected(plan, p, changed),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use fieldsync_proto::filter::Params;
    use fieldsync_proto::frame::ValueRef;
    use fieldsync_proto::task::TaskDef;
    use fieldsync_proto::time::Timestamp;
    use fieldsync_proto::wire::{Cursor, FullReason};

    use super::*;
    use crate::{SliceSink, Store};

    /// The first value of each row of each lane, and the cursor.
    #[derive(Default)]
    pub(crate) struct Keys {
        pub(crate) cursor: i64,
        pub(crate) lanes: Vec<(usize, i64)>,
    }

    impl SliceSink for Keys {
        fn begin(&mut self, cursor: Cursor, _: &[u64], _: Option<FullReason>) -> Result<()> {
            self.cursor = cursor.raw();
            Ok(())
        }
        fn row(
            &mut self,
            lane: usize,
            values: &mut dyn Iterator<Item = ValueRef<'_>>,
        ) -> Result<()> {
            match values.next() {
                Some(ValueRef::Integer(k)) => self.lanes.push((lane, k)),
                other => panic!("an integer key, not {other:?}"),
            }
            Ok(())
        }
    }

    /// `choose` on PostgreSQL with `changed` keys changed and `slice` rows in the
    /// slice (each count as its LIMIT cuts it): the way, and how many of each it
    /// counted.
    fn chosen(changed: i64, slice: i64) -> (Drive, i64, i64) {
        chosen_by(RowCost::POSTGRES, changed, slice, None)
    }

    /// [`chosen`] on SQLite, which knows that at most `most` keys changed.
    fn chosen_within(changed: i64, slice: i64, most: Option<i64>) -> (Drive, i64, i64) {
        chosen_by(RowCost::SQLITE, changed, slice, most)
    }

    /// [`chosen`] with slice rows costing `cost`.
    fn chosen_by(cost: RowCost, changed: i64, slice: i64, most: Option<i64>) -> (Drive, i64, i64) {
        let t = TablePlan {
            schema: fieldsync_proto::wire::TableSchema {
                name: "assets".into(),
                primary_key: "id".into(),
                columns: Vec::new(),
                rows_estimate: 0,
                write: Vec::new(),
                filter: None,
                parent: None,
            },
            select_sql: String::new(),
            select_list: String::new(),
            count_sql: String::new(),
            condition: "region = ?".into(),
            binds: Vec::new(),
            declared: Vec::new(),
        };
        let d = DeltaSql {
            changes: String::new(),
            slice_rows: String::new(),
            moved_out: String::new(),
            changed: "keys".into(),
        };
        let (mut counted_changed, mut counted_slice) = (0, 0);
        let mut count = |sql: &str, bound: bool| {
            let limit = sql.rsplit("LIMIT ").next().unwrap();
            let limit: i64 = limit
                .trim_end_matches([')', 'c', 's', ' '])
                .parse()
                .unwrap();
            let (all, counted) = if bound {
                (slice, &mut counted_slice)
            } else {
                (changed, &mut counted_changed)
            };
            *counted += all.min(limit);
            Ok(all.min(limit))
        };
        let drive = choose(&d, &t, cost, most, &mut count, &mut |_| Ok(true)).unwrap();
        (drive, counted_changed, counted_slice)
    }

    #[test]
    fn the_slice_way_is_taken_past_what_its_rows_cost_and_counting_stays_near_the_cheaper_way() {
        // What counting costs stays near the cheaper way's work: a few times the
        // changed keys, or what the slice's rows cost, whichever is fewer.
        let near = |changed: i64, slice: i64, counted: i64| {
            let cheaper = changed.min(RowCost::POSTGRES.of(slice));
            assert!(
                counted <= 4 * cheaper + Drive::SLICE_MIN_CHANGED,
                "counted {counted} for {changed} changed keys and {slice} slice rows"
            );
        };
        // A fleet's round: 100,000 keys changed, a 10,000-row region.
        let (drive, c, s) = chosen(100_000, 10_000);
        assert_eq!(drive, Drive::Slice);
        near(100_000, 10_000, c + s);
        // A million-row slice, 1% of it changed.
        let (drive, c, s) = chosen(10_000, 1_000_000);
        assert_eq!(drive, Drive::Changes);
        near(10_000, 1_000_000, c + s);
        // Few changes: the slice is not counted.
        assert_eq!(chosen(999, 1), (Drive::Changes, 999, 0));
        assert_eq!(chosen(1_000, 10).0, Drive::Slice);
        // An engine that knows how many changed at most (SQLite: the versions handed
        // out since) counts the slice once, and stops at the bound.
        let (drive, c, s) = chosen_within(100_000, 10_000, Some(120_000));
        assert_eq!((drive, s), (Drive::Slice, 10_000));
        assert!(c <= Drive::SLICE_MIN_CHANGED + 13_001, "counted {c}");
        let (drive, c, s) = chosen_within(10_000, 1_000_000, Some(10_500));
        assert_eq!((drive, c, s), (Drive::Changes, 1_000, 8_078));
        assert_eq!(chosen_within(900, 1, Some(999)), (Drive::Changes, 0, 0));
        // No more versions since the cursor than the slice's rows cost: settled once
        // the slice is counted, the changes not counted further.
        assert_eq!(
            chosen_within(13_000, 10_000, Some(13_000)),
            (Drive::Changes, 1_000, 10_000)
        );
        // A 200-device fleet's round on SQLite, each region 10,000 rows: 20,000 keys
        // changed cost more than the region's rows (1.3 keys a row).
        assert_eq!(chosen_within(20_000, 10_000, Some(20_000)).0, Drive::Slice);
        // Around what the slice's rows cost, at each step of the counting.
        for (cost, slices) in [
            (RowCost::POSTGRES, [600, 1_400, 2_100, 9_000, 40_000]),
            (RowCost::SQLITE, [800, 1_400, 2_100, 9_000, 40_000]),
        ] {
            for slice in slices {
                let at = cost.of(slice);
                assert_eq!(
                    chosen_by(cost, at, slice, None).0,
                    Drive::Changes,
                    "{cost:?}: {slice} rows, {at} changed"
                );
                assert_eq!(
                    chosen_by(cost, at + 1, slice, None).0,
                    Drive::Slice,
                    "{cost:?}: {slice} rows, {at} + 1 changed"
                );
            }
        }
        assert_eq!(RowCost::POSTGRES.of(10_000), 20_000);
        assert_eq!(RowCost::SQLITE.of(10_000), 13_000);
    }

    /// Stores task `north`: table `assets`, its rows in the region `north`.
    pub(crate) fn put_north(store: &dyn Store) -> TaskDef {
        let def = TaskDef::from_toml(
            "name = \"north\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = 'north'\"\n",
        )
        .unwrap();
        store.task_put(&def, "h", Timestamp::now()).unwrap();
        def
    }

    /// Tracks `assets` and `inspections` (by `asset_id`) and stores task `north`: the
    /// assets of the region `north` and the inspections under them.
    pub(crate) fn put_north_with_inspections(store: &dyn Store) -> TaskDef {
        store.track_table("assets").unwrap();
        store.track_table("inspections").unwrap();
        let def = TaskDef::from_toml(
            "name = \"north\"\n[[tables]]\nname = \"assets\"\nfilter = \"region = 'north'\"\n\
             [[tables]]\nname = \"inspections\"\nparent = { table = \"assets\", key = \"asset_id\" }\n",
        )
        .unwrap();
        store.task_put(&def, "h", Timestamp::now()).unwrap();
        def
    }

    /// `def`'s slice for user `ana` on device `dev1`.
    pub(crate) fn plan_for_dev1(store: &dyn Store, def: &TaskDef) -> SlicePlan {
        let params = Params {
            user: "ana".into(),
            device: "dev1".into(),
        };
        crate::plan_slice(store, def, &params).unwrap()
    }

    /// Every other region changed (5,000 rows written in the `south`), and a few of
    /// the `north` slice's rows: the delta comes from the slice's rows by the index
    /// `index` makes, not from the 5,000 changed keys, and says the same; without the
    /// index, or with few changes, from the changed keys. `office` runs the office's
    /// SQL on `store`'s main database; `drive`, which way the engine reads a plan's
    /// first table.
    pub(crate) fn from_the_slice_by_its_index(
        store: &dyn Store,
        office: &dyn Fn(&str),
        index: &str,
        drive: &dyn Fn(&SlicePlan) -> Drive,
    ) {
        office("CREATE TABLE assets (id INTEGER PRIMARY KEY, region TEXT NOT NULL, name TEXT)");
        office(index);
        store.track_table("assets").unwrap();
        let def = put_north(store);
        office(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 20)
             INSERT INTO assets (id, region) SELECT i, 'north' FROM k",
        );
        let mut plan = plan_for_dev1(store, &def);
        let mut full = Keys::default();
        store.stream_slice(&plan, &mut full).unwrap();
        assert_eq!(full.lanes.len(), 20);
        office(
            "UPDATE assets SET name = 'seen' WHERE id IN (1, 2, 3);
             UPDATE assets SET region = 'south' WHERE id = 4;
             DELETE FROM assets WHERE id = 5;
             WITH RECURSIVE k(i) AS (SELECT 1000 UNION ALL SELECT i + 1 FROM k WHERE i < 5999)
             INSERT INTO assets (id, region) SELECT i, 'south' FROM k;
             ANALYZE assets;",
        );
        plan.since = Some(Cursor::from_raw(full.cursor));
        let delta = |plan: &SlicePlan| {
            let mut keys = Keys::default();
            store.stream_slice(plan, &mut keys).unwrap();
            keys.lanes.sort();
            keys.lanes
        };
        let want = vec![(0, 1), (0, 2), (0, 3), (1, 4), (1, 5)];
        assert_eq!(drive(&plan), Drive::Slice);
        assert_eq!(delta(&plan), want);

        office("DROP INDEX assets_by_region");
        assert_eq!(drive(&plan), Drive::Changes);
        assert_eq!(delta(&plan), want);

        office(index);
        let mut now = Keys::default();
        plan.since = None;
        store.stream_slice(&plan, &mut now).unwrap();
        office("UPDATE assets SET name = 'again' WHERE id = 1");
        plan.since = Some(Cursor::from_raw(now.cursor));
        assert_eq!(drive(&plan), Drive::Changes);
        assert_eq!(delta(&plan), vec![(0, 1)]);
    }
}
