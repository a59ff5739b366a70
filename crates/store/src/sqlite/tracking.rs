//! Change tracking on SQLite: the triggers that stamp every row write with the next
//! row version, the check that a table's triggers are the current ones, and the
//! table's description.

use fieldsync_proto::ColumnType;
use fieldsync_proto::Value;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, now, to_sql_value};
use crate::Tracking;
use crate::plan::{quote_ident, quote_literal};
use crate::{Result, StoreError, TableInfo};

/// The tracking triggers of a table, each as its name and its `CREATE TRIGGER`
/// statement (the text SQLite keeps in `sqlite_schema`, so a table's tracking can be
/// checked by comparison: a rebuilt table has none, a renamed one stale ones).
fn tracking_triggers(info: &TableInfo) -> Vec<(String, String)> {
    let t = quote_ident(&info.name);
    let pk = quote_ident(&info.primary_key);
    let name_lit = quote_literal(&info.name);
    let trig = |suffix: &str| format!("fieldsync_{}_{suffix}", info.name);
    // The next version is one past the highest ever given (an index seek on
    // `fieldsync_rows_by_version`); rows are only ever restamped upwards.
    let next = "(SELECT coalesce(max(version), 0) + 1 FROM fieldsync_rows)";
    // An upsert, not `INSERT OR REPLACE`: a statement in a trigger takes the outer
    // statement's conflict clause instead of its own `OR …` (so `UPDATE OR IGNORE`
    // skipped the stamp, and an office upsert, `UPDATE OR ABORT` or a foreign-key
    // action failed on fieldsync's own key); an upsert clause is its own.
    const UPSERT: &str = "ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version, deleted = excluded.deleted";
    let stamp = |key: &str, deleted: u8| {
        format!(
            "INSERT INTO fieldsync_rows (tbl, pk, version, deleted) VALUES ({name_lit}, {key}, {next}, {deleted}) {UPSERT};"
        )
    };
    // A key change retires the old key (a tombstone) before stamping the new one.
    let s_old_gone = format!(
        "INSERT INTO fieldsync_rows (tbl, pk, version, deleted) SELECT {name_lit}, OLD.{pk}, {next}, 1 WHERE OLD.{pk} IS NOT NEW.{pk} {UPSERT};"
    );
    let (s_new, s_old) = (
        stamp(&format!("NEW.{pk}"), 0),
        stamp(&format!("OLD.{pk}"), 1),
    );
    vec![
        (
            trig("ins"),
            format!(
                "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN {s_new} END",
                quote_ident(&trig("ins"))
            ),
        ),
        (
            trig("upd"),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE ON {t} BEGIN {s_old_gone} {s_new} END",
                quote_ident(&trig("upd"))
            ),
        ),
        (
            trig("del"),
            format!(
                "CREATE TRIGGER {} AFTER DELETE ON {t} BEGIN {s_old} END",
                quote_ident(&trig("del"))
            ),
        ),
    ]
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
    let mut stmt = conn.prepare_cached(
        "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?1 AND tbl_name = ?2",
    )?;
    for (name, sql) in tracking_triggers(info) {
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
        // the current ones come, and every row is stamped anew, so changes made while
        // nothing stamped them count as changed for every device (compared by value).
        let stale: Vec<String> = tx
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1
                   AND name LIKE 'fieldsync\\_%' ESCAPE '\\'",
            )?
            .query_map([&info.name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for name in stale {
            tx.execute_batch(&format!("DROP TRIGGER {}", quote_ident(&name)))?;
        }
        for (_, sql) in tracking_triggers(&info) {
            tx.execute_batch(&sql)?;
        }
        let t = quote_ident(&info.name);
        let pk = quote_ident(&info.primary_key);
        let next = "(SELECT coalesce(max(version), 0) + 1 FROM fieldsync_rows)";
        tx.execute(
            &format!(
                "INSERT INTO fieldsync_rows (tbl, pk, version, deleted)
                 SELECT ?1, {pk}, {next}, 0 FROM {t} WHERE true
                 ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version, deleted = 0"
            ),
            [&info.name],
        )?;
        // Rows deleted while nothing stamped them leave tombstones now.
        tx.execute(
            &format!(
                "UPDATE fieldsync_rows SET deleted = 1, version = {next}
                 WHERE tbl = ?1 AND deleted = 0 AND pk NOT IN (SELECT {pk} FROM {t})"
            ),
            [&info.name],
        )?;
        tx.execute(
            "DELETE FROM fieldsync_tracked WHERE name = ?1",
            [&info.name],
        )?;
        tx.execute(
            "INSERT INTO fieldsync_tracked (name, primary_key, tracked_at) VALUES (?1, ?2, ?3)",
            params![info.name, info.primary_key, now()],
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
