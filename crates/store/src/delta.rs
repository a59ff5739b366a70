//! The SQL of a delta, engine-neutral: which rows of each table a download from a
//! cursor sends, and which keys it names as gone. Each engine says only what "changed
//! since the cursor" is (`changed`: a query of the table's changed keys, typed as the
//! table's key): on SQLite a higher row version, on PostgreSQL a writing transaction
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
//! One query per table gives both, so that each changed key is looked up in its table
//! once, and the slice's condition is written once (SQLite's filter parameters are
//! positional): the changed keys, and the keys under a changed parent chain, left-joined
//! to the table in the slice ([`DeltaSql`]).

use crate::plan::{SlicePlan, quote_ident};

/// One table's delta query; it binds the table's `binds` and nothing else. Its first
/// column is a changed key (read as `key_expr` renders it), NULL for a key that is
/// there only because its parent chain changed; then the table's columns, NULL when the
/// key's row is not in the slice now. A row whose second column (the table's key) is
/// not NULL is a row to send; otherwise its first column, when not NULL, is a key that
/// left.
pub(crate) struct DeltaSql {
    pub changes: String,
}

/// What a slice query's rows are, for the engine reading them: the table's rows, or a
/// delta's changes ([`DeltaSql`]), whose keys that left go to lane `gone`.
#[derive(Clone, Copy)]
pub(crate) enum Lanes {
    Rows,
    Changes { gone: usize },
}

/// The delta queries of every table of `plan`. `changed(i)`: a query with two columns,
/// `k`, the keys of table `i` changed since the cursor, typed as its key column, each
/// key once, and `g`, the same key when its row may have moved since the cursor (else
/// NULL); `key_expr(i, column)`: how the engine reads key column `column` of table
/// `i`.
pub(crate) fn delta_sql(
    plan: &SlicePlan,
    changed: &dyn Fn(usize) -> String,
    key_expr: &dyn Fn(usize, &str) -> String,
) -> Vec<DeltaSql> {
    (0..plan.tables.len())
        .map(|i| {
            let t = &plan.tables[i];
            let table = quote_ident(&t.schema.name);
            let pk = quote_ident(&t.schema.primary_key);
            let own = changed(i);
            let mut keys = format!("SELECT k, g FROM ({own}) o");
            // Under a parent whose chain changed, not changed themselves: sent when in
            // the slice, never named gone (a row out of the slice under a changed
            // parent was not on the device).
            if let Some(under) = parent_affected(plan, i, changed) {
                keys.push_str(&format!(
                    " UNION ALL SELECT a{i}.{pk}, NULL FROM {table} a{i} WHERE {under} \
                     AND NOT EXISTS (SELECT 1 FROM ({own}) o2 WHERE o2.k = a{i}.{pk})"
                ));
            }
            DeltaSql {
                changes: format!(
                    "SELECT {gone}, {list} FROM ({keys}) c LEFT JOIN {table} ON {table}.{pk} = c.k AND {cond}",
                    gone = key_expr(i, "c.g"),
                    list = t.select_list,
                    cond = t.condition,
                ),
            }
        })
        .collect()
}

/// The keys of table `i` whose row or a row of whose parent chain changed.
fn affected(plan: &SlicePlan, i: usize, changed: &dyn Fn(usize) -> String) -> String {
    let own = format!("SELECT k FROM ({}) ch{i}", changed(i));
    let Some(under) = parent_affected(plan, i, changed) else {
        return own;
    };
    let t = &plan.tables[i];
    format!(
        "{own} UNION SELECT a{i}.{pk} FROM {table} a{i} WHERE {under}",
        table = quote_ident(&t.schema.name),
        pk = quote_ident(&t.schema.primary_key),
    )
}

/// The condition that a row of table `i`, aliased `a{i}` (apart from the table as an
/// outer query names it), is under a parent whose row or parent chain changed; `None`
/// for a table without a parent in the slice.
fn parent_affected(
    plan: &SlicePlan,
    i: usize,
    changed: &dyn Fn(usize) -> String,
) -> Option<String> {
    let parent = plan.tables[i].schema.parent.as_ref()?;
    let p = plan.table_index(&parent.table)?;
    // A task's parent chain has no cycles: `TaskDef::check` refuses them.
    Some(format!(
        "a{i}.{} IN ({})",
        quote_ident(&parent.key),
        affected(plan, p, changed),
    ))
}
