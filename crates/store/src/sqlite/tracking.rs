//! Change tracking on SQLite: the triggers that stamp every row write with the next
//! row version, the check that a table's triggers are the current ones, and the
//! table's description.

use fieldsync_proto::ColumnType;
use fieldsync_proto::Value;
use fieldsync_proto::task::TaskDef;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, now, to_sql_value};
use crate::Tracking;
use crate::plan::{quote_ident, quote_literal};
use crate::{Result, StoreError, TableInfo};

/// The tracking triggers of a table, each as its name and its `CREATE TRIGGER`
/// statement (the text SQLite keeps in `sqlite_schema`, so a table's tracking can be
/// checked by comparison: a rebuilt table has none, a renamed one stale ones).
///
/// Each write stamps the row's key with the next version; a write that may have moved
/// the row into or out of a slice also sets its `moved` version: a delete, a key change,
/// or an update of a `watch` column (the columns tasks filter by or link parents by,
/// [`crate::plan::watch_columns`]). A delta names a key gone only when its `moved` is past the
/// cursor: a row that changed otherwise and is not in the slice now was not in it
/// before either.
fn tracking_triggers(info: &TableInfo, watch: &[String]) -> Vec<(String, String)> {
    let t = quote_ident(&info.name);
    let pk = quote_ident(&info.primary_key);
    let name_lit = quote_literal(&info.name);
    let [ins, upd, del] = tracking_trigger_names(&info.name);
    // The next version is one past the highest ever given (an index seek on
    // `fieldsync_rows_by_version`); rows are only ever restamped upwards.
    let next = "(SELECT coalesce(max(version), 0) + 1 FROM fieldsync_rows)";
    // An upsert, not `INSERT OR REPLACE`: a statement in a trigger takes the outer
    // statement's conflict clause instead of its own `OR …` (so `UPDATE OR IGNORE`
    // skipped the stamp, and an office upsert, `UPDATE OR ABORT` or a foreign-key
    // action failed on fieldsync's own key); an upsert clause is its own. `moved` only
    // ever grows: a write that moves nothing keeps the last move's version.
    const UPSERT: &str = "ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version, deleted = excluded.deleted, moved = max(moved, excluded.moved)";
    let stamp = |key: &str, deleted: u8, moved: &str| {
        format!(
            "INSERT INTO fieldsync_rows (tbl, pk, version, deleted, moved) VALUES ({name_lit}, {key}, {next}, {deleted}, {moved}) {UPSERT};"
        )
    };
    // A key change retires the old key (a tombstone) before stamping the new one.
    let s_old_gone = format!(
        "INSERT INTO fieldsync_rows (tbl, pk, version, deleted, moved) SELECT {name_lit}, OLD.{pk}, {next}, 1, {next} WHERE OLD.{pk} IS NOT NEW.{pk} {UPSERT};"
    );
    // Compared byte for byte and by type, whatever the column's collation: filters do
    // (`'North'` is not `'north'` to a filter even in a NOCASE column).
    let moved_by_update = if watch.is_empty() {
        "0".to_string()
    } else {
        let changed: Vec<String> = watch
            .iter()
            .map(|c| {
                let c = quote_ident(c);
                format!(
                    "OLD.{c} IS NOT NEW.{c} COLLATE BINARY OR typeof(OLD.{c}) <> typeof(NEW.{c})"
                )
            })
            .collect();
        format!("CASE WHEN {} THEN {next} ELSE 0 END", changed.join(" OR "))
    };
    let (s_ins, s_upd, s_del) = (
        stamp(&format!("NEW.{pk}"), 0, "0"),
        stamp(&format!("NEW.{pk}"), 0, &moved_by_update),
        stamp(&format!("OLD.{pk}"), 1, next),
    );
    let create = |name: &str, event: &str, body: String| {
        format!(
            "CREATE TRIGGER {} AFTER {event} ON {t} BEGIN {body} END",
            quote_ident(name)
        )
    };
    let (on_ins, on_upd, on_del) = (
        create(&ins, "INSERT", s_ins),
        create(&upd, "UPDATE", format!("{s_old_gone} {s_upd}")),
        create(&del, "DELETE", s_del),
    );
    vec![(ins, on_ins), (upd, on_upd), (del, on_del)]
}

/// The names of a table's tracking triggers (after insert, update, delete): what
/// tells fieldsync's triggers from the office's own.
pub(super) fn tracking_trigger_names(table: &str) -> [String; 3] {
    ["ins", "upd", "del"].map(|event| format!("fieldsync_{table}_{event}"))
}

/// The stored tasks, read once for every table a change rewatches
/// ([`crate::plan::watch_columns`]).
fn stored_tasks(conn: &Connection) -> Result<Vec<TaskDef>> {
    let jsons: Vec<String> = conn
        .prepare_cached("SELECT definition FROM fieldsync_tasks")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    crate::plan::stored_tasks(jsons)
}

/// The watch recorded with a table's tracking (none for a table not tracked).
fn recorded_watch(conn: &Connection, table: &str) -> Result<Vec<String>> {
    let json: Option<String> = conn
        .query_row(
            "SELECT watch FROM fieldsync_tracked WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    match json {
        None => Ok(Vec::new()),
        Some(j) => serde_json::from_str(&j)
            .map_err(|e| StoreError::Db(format!("the watch of `{table}` is unreadable: {e}"))),
    }
}

/// Replaces whatever fieldsync triggers `info`'s table has by the current ones for
/// `watch`, and records the watch.
fn install_triggers(conn: &Connection, info: &TableInfo, watch: &[String]) -> Result<()> {
    let stale: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1
               AND name LIKE 'fieldsync\\_%' ESCAPE '\\'",
        )?
        .query_map([&info.name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for name in stale {
        conn.execute_batch(&format!("DROP TRIGGER {}", quote_ident(&name)))?;
    }
    for (_, sql) in tracking_triggers(info, watch) {
        conn.execute_batch(&sql)?;
    }
    conn.execute(
        "UPDATE fieldsync_tracked SET watch = ?2 WHERE name = ?1",
        params![
            info.name,
            serde_json::to_string(watch).expect("a list of names")
        ],
    )?;
    Ok(())
}

/// Sets every tracked table's watch to what the stored tasks filter and link parents
/// by, in the caller's transaction, after a task was stored or deleted. A column that
/// joins the watch was not watched before: every write of the table since any cursor
/// then counts as a move (`moved` raised to `version`), so that a device whose task
/// needs the column (a task deleted and applied again, the same) is never told less
/// than it must remove. A column that leaves it no current task reads.
pub(crate) fn rewatch(conn: &Connection) -> Result<()> {
    let tables: Vec<String> = conn
        .prepare_cached("SELECT name FROM fieldsync_tracked")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let tasks = stored_tasks(conn)?;
    for table in tables {
        let Some(info) = table_info(conn, &table)? else {
            continue;
        };
        if !info.tracked {
            continue;
        }
        let before = recorded_watch(conn, &info.name)?;
        let watch = crate::plan::watch_columns(&tasks, &info)?;
        if watch == before {
            continue;
        }
        if watch.iter().any(|c| !before.contains(c)) {
            conn.execute(
                "UPDATE fieldsync_rows SET moved = version WHERE tbl = ?1 AND moved < version",
                [&info.name],
            )?;
        }
        install_triggers(conn, &info, &watch)?;
    }
    Ok(())
}

/// Triggers of an older fieldsync put right where the table is otherwise tracked (the
/// upgrade of `init`): the versions they stamped stay good, so no row is stamped anew;
/// rows stamped before `moved` existed count as moved at their version.
pub(crate) fn renew_triggers(conn: &Connection) -> Result<()> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM fieldsync_tracked")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let tasks = stored_tasks(conn)?;
    for table in tables {
        let Some(info) = table_info(conn, &table)? else {
            continue;
        };
        if info.tracked || info.primary_key.is_empty() {
            continue;
        }
        // Only where the old triggers are all there: a table that lost them (rebuilt
        // since) has writes nothing stamped, which only `track_table` restamps.
        let mut present = 0;
        for (name, _) in tracking_triggers(&info, &[]) {
            present += conn.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name = ?1 AND tbl_name = ?2",
                [&name, &info.name],
                |r| r.get::<_, i64>(0),
            )?;
        }
        if present != 3 {
            continue;
        }
        let watch = crate::plan::watch_columns(&tasks, &info)?;
        install_triggers(conn, &info, &watch)?;
    }
    Ok(())
}

/// Whether a table's tracking is in place: recorded, and its triggers exactly the
/// current ones.
fn tracking_intact(conn: &Connection, info: &TableInfo) -> Result<bool> {
    let recorded: bool = conn
        .query_row(
            "SELECT count(*) FROM fieldsync_tracked WHERE name = ?1 AND primary_key = ?2",
            [&info.name, &info.primary_key],
            |r| r.get(0),
        )
        .unwrap_or(false);
    if !recorded || info.primary_key.is_empty() {
        return Ok(false);
    }
    let watch = recorded_watch(conn, &info.name)?;
    let mut stmt = conn.prepare_cached(
        "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?1 AND tbl_name = ?2",
    )?;
    for (name, sql) in tracking_triggers(info, &watch) {
        let found: Option<String> = stmt
            .query_row([&name, &info.name], |r| r.get(0))
            .optional()?;
        if found.as_deref() != Some(sql.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) fn table_info(conn: &Connection, table: &str) -> Result<Option<TableInfo>> {
    // The name is only ever a bound value here; quoted identifiers are built from the
    // schema's own spelling.
    let name: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(name) = name else { return Ok(None) };
    let mut stmt = conn.prepare("SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let mut columns = Vec::new();
    let mut pks = Vec::new();
    let rows = stmt.query_map([&name], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, bool>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (col, declared, not_null, has_default, pk) = row?;
        if pk > 0 {
            pks.push(col.clone());
        }
        let column_type = ColumnType::from_declared(&declared);
        // An INTEGER PRIMARY KEY is the rowid: SQLite assigns it when omitted.
        let rowid_alias = pk > 0 && declared.eq_ignore_ascii_case("INTEGER");
        columns.push(crate::ColumnInfo {
            name: col,
            declared_type: declared,
            column_type,
            not_null: not_null || (pk > 0 && !rowid_alias),
            has_default: has_default || rowid_alias,
        });
    }
    let primary_key = if pks.len() == 1 {
        pks.remove(0)
    } else {
        String::new()
    };
    // An AUTOINCREMENT key never takes a value at or below `sqlite_sequence`'s: the
    // counter blocks for devices are reserved from (a plain rowid takes max + 1,
    // which would walk into a block).
    let autoincrement = !primary_key.is_empty()
        && columns
            .iter()
            .any(|c| c.name == primary_key && c.declared_type.eq_ignore_ascii_case("INTEGER"))
        && conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [&name],
                |r| r.get::<_, Option<String>>(0),
            )?
            .is_some_and(|sql| sql.to_ascii_uppercase().contains("AUTOINCREMENT"));
    let mut info = TableInfo {
        name,
        primary_key,
        columns,
        tracked: false,
        key_source: autoincrement.then(|| "sqlite_sequence (AUTOINCREMENT)".to_string()),
    };
    info.tracked = tracking_intact(conn, &info)?;
    Ok(Some(info))
}

impl Tracking for SqliteStore {
    fn table_info(&self, table: &str) -> Result<Option<TableInfo>> {
        table_info(&*self.conn()?, table)
    }

    fn track_table(&self, table: &str) -> Result<TableInfo> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let info = table_info(&tx, table)?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "no table `{}` in the main database",
                table.escape_debug()
            ))
        })?;
        let lower = info.name.to_ascii_lowercase();
        if lower.starts_with("fieldsync_") || lower.starts_with("sqlite_") {
            return Err(StoreError::Invalid(format!(
                "`{}` is an internal table and cannot be tracked",
                info.name
            )));
        }
        if info.primary_key.is_empty() {
            return Err(StoreError::Invalid(format!(
                "table `{}` cannot be tracked: it needs a single-column primary key",
                info.name
            )));
        }
        if info.tracked {
            return Ok(info);
        }
        // Missing or stale tracking (first time, a table rebuilt or renamed since, an
        // older fieldsync's triggers): whatever fieldsync triggers the table has go,
        // the current ones come, and every row is stamped anew (and counts as moved),
        // so changes made while nothing stamped them count as changed for every device
        // (compared by value).
        let watch = crate::plan::watch_columns(&stored_tasks(&tx)?, &info)?;
        tx.execute(
            "DELETE FROM fieldsync_tracked WHERE name = ?1",
            [&info.name],
        )?;
        tx.execute(
            "INSERT INTO fieldsync_tracked (name, primary_key, tracked_at) VALUES (?1, ?2, ?3)",
            params![info.name, info.primary_key, now()],
        )?;
        install_triggers(&tx, &info, &watch)?;
        let t = quote_ident(&info.name);
        let pk = quote_ident(&info.primary_key);
        let next = "(SELECT coalesce(max(version), 0) + 1 FROM fieldsync_rows)";
        tx.execute(
            &format!(
                "INSERT INTO fieldsync_rows (tbl, pk, version, deleted, moved)
                 SELECT ?1, {pk}, {next}, 0, {next} FROM {t} WHERE true
                 ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version, deleted = 0, moved = excluded.moved"
            ),
            [&info.name],
        )?;
        // Rows deleted while nothing stamped them leave tombstones now.
        tx.execute(
            &format!(
                "UPDATE fieldsync_rows SET deleted = 1, version = {next}, moved = {next}
                 WHERE tbl = ?1 AND deleted = 0 AND pk NOT IN (SELECT {pk} FROM {t})"
            ),
            [&info.name],
        )?;
        tx.commit()?;
        Ok(TableInfo {
            tracked: true,
            ..info
        })
    }

    fn row_version(&self, table: &str, key: &Value) -> Result<Option<(i64, bool)>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT version, deleted FROM fieldsync_rows WHERE tbl = ?1 AND pk = ?2",
                params![table, to_sql_value(key)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }
}
