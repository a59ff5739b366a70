//! `device journal restore FILE`: the entries of a backup file made again as edits of
//! the replica, by the logged-in user, through the journal's triggers, so each is
//! checked as any edit is (the task's writes, the slice, the user). A discarded edit
//! usually still stands in the replica (discarding forgets the entry, not the value),
//! so each entry first puts the row back as it was before it (its `old` values, the
//! triggers standing aside as for the server's rows), then is made again. The file is
//! whatever the person holding the device gives: every name in it is checked against
//! the replica's own tables and columns before it reaches SQL.

use std::io::BufRead;
use std::path::Path;

use fieldsync_proto::Value;
use fieldsync_proto::task::WriteOp;
use fieldsync_proto::wire::SliceHeader;
use rusqlite::Connection;

use super::JournalEntry;
use crate::error::{ClientError, Result};
use crate::triggers::quote;

/// The entries of a backup file (JSON lines), or an error naming the bad line.
pub fn read_backup(path: &Path) -> Result<Vec<JournalEntry>> {
    let file = std::fs::File::open(path)
        .map_err(|e| ClientError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line).map_err(|e| {
            ClientError::Invalid(format!(
                "{} line {}: not a journal entry of a backup file: {e}",
                path.display(),
                i + 1
            ))
        })?;
        out.push(entry);
    }
    if out.is_empty() {
        return Err(ClientError::Invalid(format!(
            "{} holds no journal entry",
            path.display()
        )));
    }
    Ok(out)
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Integer(i) => rusqlite::types::Value::Integer(*i),
        Value::Real(r) => rusqlite::types::Value::Real(*r),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

/// Makes `entries` again on `conn` (inside the caller's transaction), in order; the
/// first that cannot be made (a table or column this replica lacks, a row no longer
/// here, a refusal of the triggers) is an error naming it. Returns how many.
pub fn redo(conn: &Connection, header: &SliceHeader, entries: &[JournalEntry]) -> Result<usize> {
    for (i, e) in entries.iter().enumerate() {
        let what = format!("entry {} ({} of `{}`)", i + 1, op_word(e.op), e.table);
        let bad =
            |why: String| ClientError::Invalid(format!("{what}: {why}; nothing was restored"));
        let t = header
            .tables
            .iter()
            .find(|t| t.name == e.table)
            .ok_or_else(|| bad("this replica has no such table".into()))?;
        if let Some(col) = e
            .new
            .keys()
            .chain(e.old.keys())
            .find(|col| !t.columns.iter().any(|c| &c.name == *col))
        {
            return Err(bad(format!("the table has no column `{col}`")));
        }
        let (table, pk) = (quote(&t.name), quote(&t.primary_key));
        before(conn, e, &table, &pk).map_err(|err| bad(err.to_string()))?;
        let done = match e.op {
            WriteOp::Insert => insert_row(conn, &table, &e.new),
            WriteOp::Update if e.new.is_empty() => Ok(1),
            WriteOp::Update => update_row(conn, &table, &pk, &e.new, &e.key),
            WriteOp::Delete => conn.execute(
                &format!("DELETE FROM {table} WHERE {pk} = ?1"),
                [to_sql(&e.key)],
            ),
        };
        match done {
            Ok(0) => return Err(bad("the row is no longer in this replica".into())),
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) => return Err(bad(msg)),
            Err(other) => return Err(bad(other.to_string())),
        }
    }
    Ok(entries.len())
}

/// Puts the entry's row back as it was before the entry, the triggers standing aside:
/// an inserted row not there, a deleted row there (its `old` values), an updated row
/// with its `old` values.
fn before(conn: &Connection, e: &JournalEntry, table: &str, pk: &str) -> rusqlite::Result<()> {
    let key = to_sql(&e.key);
    let exists: bool = conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {pk} = ?1)"),
        [&key],
        |r| r.get(0),
    )?;
    let aside = |on: bool| {
        conn.execute(
            "INSERT INTO fieldsync_replica (key, value) VALUES ('applying', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [if on { Some("1") } else { None }],
        )
    };
    aside(true)?;
    let done = match e.op {
        WriteOp::Insert if exists => conn
            .execute(&format!("DELETE FROM {table} WHERE {pk} = ?1"), [&key])
            .map(drop),
        WriteOp::Delete if !exists && !e.old.is_empty() => {
            insert_row(conn, table, &e.old).map(drop)
        }
        WriteOp::Update if exists && !e.old.is_empty() => {
            update_row(conn, table, pk, &e.old, &e.key).map(drop)
        }
        _ => Ok(()),
    };
    aside(false)?;
    done
}

use fieldsync_proto::Row;

/// `INSERT` of `row` (names checked by the caller, quoted here).
fn insert_row(conn: &Connection, table: &str, row: &Row) -> rusqlite::Result<usize> {
    let names: Vec<String> = row.keys().map(|c| quote(c)).collect();
    let values: Vec<rusqlite::types::Value> = row.values().map(to_sql).collect();
    let marks = vec!["?"; names.len()].join(", ");
    conn.execute(
        &format!(
            "INSERT INTO {table} ({}) VALUES ({marks})",
            names.join(", ")
        ),
        rusqlite::params_from_iter(values.iter()),
    )
}

/// `UPDATE` of the row `key` to `row`'s values; how many rows it changed.
fn update_row(
    conn: &Connection,
    table: &str,
    pk: &str,
    row: &Row,
    key: &Value,
) -> rusqlite::Result<usize> {
    let sets: Vec<String> = row
        .keys()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", quote(c), i + 1))
        .collect();
    let mut params: Vec<rusqlite::types::Value> = row.values().map(to_sql).collect();
    params.push(to_sql(key));
    conn.execute(
        &format!(
            "UPDATE {table} SET {} WHERE {pk} = ?{}",
            sets.join(", "),
            params.len()
        ),
        rusqlite::params_from_iter(params.iter()),
    )
}

fn op_word(op: WriteOp) -> &'static str {
    match op {
        WriteOp::Insert => "insert",
        WriteOp::Update => "update",
        WriteOp::Delete => "delete",
    }
}
