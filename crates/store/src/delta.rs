//! The SQL of a delta, engine-neutral: which rows of each table a download from a
//! cursor sends, and which keys it names as gone. Each engine says only what "changed
//! since the cursor" is (`changed`: a query of the table's changed keys, typed as the
//! table's key): on SQLite a higher row version, on PostgreSQL a writing transaction
//! the cursor's snapshot does not see.
//!
//! A row is sent when it is in the slice now and it, or a row of its parent chain,
//! changed since the cursor: a row that entered the slice because its parent did is
//! sent although it did not change itself. A key is named gone when its row changed
//! and is not in the slice now (deleted, filtered out, moved under a parent outside
//! the slice); rows that left only because their parent left are the device's to
//! remove with the parent. Both are over-approximations that are right to apply: a
//! row sent again is written again, a gone key the device does not hold removes
//! nothing.

use crate::plan::{SlicePlan, quote_ident};

/// One table's delta queries; both bind the table's `binds` and nothing else.
pub(crate) struct DeltaSql {
    /// The table's select list, of its rows to send.
    pub rows: String,
    /// The keys that left (one column, read as `key_expr` renders it).
    pub gone: String,
}

/// The delta queries of every table of `plan`. `changed(i)`: a query with one column
/// `k`, the keys of table `i` changed since the cursor, typed as its key column;
/// `key_expr(i, column)`: how the engine reads key column `column` of table `i`.
pub(crate) fn delta_sql(
    plan: &SlicePlan,
    changed: &dyn Fn(usize) -> String,
    key_expr: &dyn Fn(usize, &str) -> String,
) -> Vec<DeltaSql> {
    (0..plan.tables.len())
        .map(|i| {
            let t = &plan.tables[i];
            let table = quote_ident(&t.schema.name);
            let pk = format!("{table}.{}", quote_ident(&t.schema.primary_key));
            DeltaSql {
                rows: format!("{} AND {pk} IN ({})", t.select_sql, affected(plan, i, changed)),
                gone: format!(
                    "SELECT {} FROM ({}) c WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {pk} = c.k AND {})",
                    key_expr(i, "c.k"),
                    changed(i),
                    t.condition
                ),
            }
        })
        .collect()
}

/// The keys of table `i` whose row or a row of whose parent chain changed.
fn affected(plan: &SlicePlan, i: usize, changed: &dyn Fn(usize) -> String) -> String {
    let t = &plan.tables[i];
    let own = changed(i);
    let Some(parent) = &t.schema.parent else {
        return own;
    };
    let Some(p) = plan.table_index(&parent.table) else {
        return own;
    };
    // A task's parent chain has no cycles: `TaskDef::check` refuses them.
    // The alias keeps this scan apart from the table as the outer query names it.
    let table = quote_ident(&t.schema.name);
    format!(
        "{own} UNION SELECT a{i}.{pk} FROM {table} a{i} WHERE a{i}.{key} IN ({})",
        affected(plan, p, changed),
        pk = quote_ident(&t.schema.primary_key),
        key = quote_ident(&parent.key),
    )
}
