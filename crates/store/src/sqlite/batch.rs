//! An upload's inserts written in multi-row statements. Each statement on a tracked
//! table with a foreign key runs under a statement journal (its triggers write
//! another table, and a failure must undo the statement alone): every page it touches
//! is copied first. One statement per row copied the same pages row after row; one
//! per run of rows copies them once per run (a 100,000-row send's integration spent a
//! quarter of its time there).
//!
//! A run holds consecutive inserts into one table with the same columns, on a table
//! whose only triggers are fieldsync's (so each row stamps exactly one version, in
//! row order). It is written before anything could observe its rows (`SqliteUpload`
//! flushes it before every read of its table or of a table under it, and before any
//! other write); a run that fails is written again row by row to name the entry the
//! database refused.

use fieldsync_proto::Value;
use fieldsync_proto::conflict::{Row, Write};
use rusqlite::{Transaction, params};

use super::to_sql_value;
use super::tracking::tracking_trigger_names;
use crate::integrate::HashMap;
use crate::plan::quote_ident;
use crate::{StoreError, TableInfo};

/// Rows per statement at most (and never more than 30,000 bound values).
const RUN_ROWS: usize = 64;

/// A write refused by the main database: the entry and why.
pub(super) struct Refused {
    pub entry: usize,
    pub why: String,
}

/// The inserts waiting to be written, and the versions of those written.
#[derive(Default)]
pub(super) struct InsertRun {
    table: String,
    columns: Vec<String>,
    /// (entry, key, values in `columns` order)
    rows: Vec<(usize, Value, Vec<Value>)>,
    /// The versions the written rows got, in the order they were taken.
    pub versions: Vec<i64>,
    /// Tables whose only triggers are fieldsync's.
    plain: HashMap<String, bool>,
}

impl InsertRun {
    /// Whether an insert of `row` into `info` can wait in the run (flush first when
    /// it cannot join the rows waiting).
    pub fn takes(
        &mut self,
        tx: &Transaction<'_>,
        info: &TableInfo,
        row: &Row,
    ) -> rusqlite::Result<bool> {
        if !self.plain.contains_key(&info.name) {
            let [ins, upd, del] = tracking_trigger_names(&info.name);
            let others: i64 = tx.query_row(
                // Names compare as SQLite's identifiers do (`ON Inspections` is the
                // same table).
                "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'
                 AND tbl_name = ?1 COLLATE NOCASE AND name NOT IN (?2, ?3, ?4)",
                params![info.name, ins, upd, del],
                |r| r.get(0),
            )?;
            self.plain.insert(info.name.clone(), others == 0);
        }
        Ok(self.plain[&info.name] && !row.is_empty())
    }

    /// Whether the waiting rows are of `table` with these columns.
    pub fn joins(&self, table: &str, row: &Row) -> bool {
        self.rows.is_empty() || (self.table == table && self.columns.iter().eq(row.keys()))
    }

    pub fn table(&self) -> Option<&str> {
        (!self.rows.is_empty()).then_some(self.table.as_str())
    }

    /// Whether a row with `key` may wait: the same value, or a value of another kind
    /// (a key the column converts, `"5"` into an integer column, must not slip past
    /// a read; such a read writes the run first).
    pub fn holds_key(&self, key: &Value) -> bool {
        self.rows
            .iter()
            .any(|(_, k, _)| std::mem::discriminant(k) != std::mem::discriminant(key) || k == key)
    }

    /// Adds an insert; the index of its version among `versions` once written.
    pub fn push(&mut self, entry: usize, info: &TableInfo, key: &Value, row: &Row) -> usize {
        if self.rows.is_empty() {
            self.table.clone_from(&info.name);
            self.columns = row.keys().cloned().collect();
        }
        self.rows
            .push((entry, key.clone(), row.values().cloned().collect()));
        self.versions.len() + self.rows.len() - 1
    }

    /// Whether the run is as long as a statement takes.
    pub fn full(&self) -> bool {
        let per = RUN_ROWS.min(30_000 / self.columns.len().max(1)).max(1);
        self.rows.len() >= per
    }

    /// Writes the waiting rows in one statement and takes their versions; `before`
    /// is the highest version there is (its rows are stamped above it).
    pub fn flush(&mut self, tx: &Transaction<'_>, before: i64) -> Result<(), Flush> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let sql = insert_sql(&self.table, &self.columns, rows.len());
        let written = tx.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(
            rows.iter().flat_map(|(_, _, v)| v.iter()).map(to_sql_value),
        ));
        if let Err(e) = written {
            // The statement was undone alone: row by row, to name the refused entry.
            let mut single = tx.prepare_cached(&insert_sql(&self.table, &self.columns, 1))?;
            for (entry, _, values) in &rows {
                if let Err(e) =
                    single.execute(rusqlite::params_from_iter(values.iter().map(to_sql_value)))
                {
                    return Err(Flush::Refused(Refused {
                        entry: *entry,
                        why: e.to_string(),
                    }));
                }
            }
            return Err(Flush::Refused(Refused {
                entry: rows[0].0,
                why: e.to_string(),
            }));
        }
        let mut stamped = tx.prepare_cached(
            "SELECT version FROM fieldsync_rows WHERE version > ?1 ORDER BY version",
        )?;
        let versions: Vec<i64> = stamped
            .query_map([before], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if versions.len() != rows.len() {
            return Err(Flush::Db(StoreError::Db(format!(
                "{} rows inserted into `{}` stamped {} versions",
                rows.len(),
                self.table,
                versions.len()
            ))));
        }
        self.versions.extend(versions);
        Ok(())
    }
}

/// Why a run could not be written.
pub(super) enum Flush {
    Refused(Refused),
    Db(StoreError),
}

impl From<rusqlite::Error> for Flush {
    fn from(e: rusqlite::Error) -> Self {
        Flush::Db(e.into())
    }
}

/// `INSERT INTO table (columns) VALUES (?, …)`, with `rows` rows of placeholders.
fn insert_sql<'a>(
    table: &str,
    columns: impl IntoIterator<Item = &'a String>,
    rows: usize,
) -> String {
    let cols: Vec<String> = columns.into_iter().map(|c| quote_ident(c)).collect();
    let one = format!("({})", vec!["?"; cols.len()].join(", "));
    format!(
        "INSERT INTO {} ({}) VALUES {}",
        quote_ident(table),
        cols.join(", "),
        vec![one.as_str(); rows].join(", ")
    )
}

/// The SQL of the last write per table and kind, reused while the columns repeat
/// (a bulk upload writes the same columns over and over).
#[derive(Default)]
pub(super) struct WriteSql(HashMap<String, HashMap<&'static str, (Vec<String>, String)>>);

impl WriteSql {
    fn get(&mut self, info: &TableInfo, kind: &'static str, row: &Row) -> &str {
        if !self.0.contains_key(&info.name) {
            self.0.insert(info.name.clone(), HashMap::default());
        }
        let slot = self
            .0
            .get_mut(&info.name)
            .expect("inserted above")
            .entry(kind)
            .or_default();
        if !slot.0.iter().eq(row.keys()) || slot.1.is_empty() {
            let table = quote_ident(&info.name);
            let pk = quote_ident(&info.primary_key);
            let sql = match kind {
                "insert" => insert_sql(&info.name, row.keys(), 1),
                "update" => {
                    let sets: Vec<String> = row
                        .keys()
                        .map(|c| format!("{} = ?", quote_ident(c)))
                        .collect();
                    format!("UPDATE {table} SET {} WHERE {pk} = ?", sets.join(", "))
                }
                _ => format!("DELETE FROM {table} WHERE {pk} = ?"),
            };
            *slot = (row.keys().cloned().collect(), sql);
        }
        &slot.1
    }
}

/// One write, now.
pub(super) fn apply(
    tx: &Transaction<'_>,
    sql: &mut WriteSql,
    info: &TableInfo,
    key: &Value,
    write: &Write,
) -> rusqlite::Result<()> {
    let none = Row::new();
    match write {
        Write::Insert(row) => {
            let mut stmt = tx.prepare_cached(sql.get(info, "insert", row))?;
            stmt.execute(rusqlite::params_from_iter(row.values().map(to_sql_value)))?;
        }
        Write::Update(row) => {
            let mut stmt = tx.prepare_cached(sql.get(info, "update", row))?;
            stmt.execute(rusqlite::params_from_iter(
                row.values().chain(std::iter::once(key)).map(to_sql_value),
            ))?;
        }
        Write::Delete => {
            tx.prepare_cached(sql.get(info, "delete", &none))?
                .execute([to_sql_value(key)])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(tx: &Transaction<'_>, name: &str) -> TableInfo {
        super::super::table_info(tx, name).unwrap().unwrap()
    }

    /// Only a table whose triggers are all fieldsync's takes inserts in runs (each row
    /// then stamps one version): an office trigger, however its table is spelt, writes
    /// them one by one.
    #[test]
    fn a_table_with_an_office_trigger_takes_no_runs() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE a (id TEXT PRIMARY KEY, v TEXT);
             CREATE TABLE b (id TEXT PRIMARY KEY, v TEXT);
             CREATE TABLE log (v TEXT);
             CREATE TRIGGER fieldsync_a_ins AFTER INSERT ON a BEGIN SELECT 1; END;
             CREATE TRIGGER fieldsync_b_ins AFTER INSERT ON b BEGIN SELECT 1; END;
             CREATE TRIGGER office_log AFTER INSERT ON B BEGIN INSERT INTO log VALUES (NEW.v); END;",
        )
        .unwrap();
        let tx = conn.transaction().unwrap();
        let row = Row::from([("id".to_string(), Value::Text("k".into()))]);
        let mut run = InsertRun::default();
        let (a, b) = (info(&tx, "a"), info(&tx, "b"));
        assert!(run.takes(&tx, &a, &row).unwrap());
        assert!(!run.takes(&tx, &b, &row).unwrap());
        assert!(!run.takes(&tx, &a, &Row::new()).unwrap());
    }
}
