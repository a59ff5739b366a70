//! Files attached to rows (`admin file`, a task's `[files]`): the records every engine
//! keeps, and the engine-neutral SQL that finds a slice's files by the slice's own
//! conditions, so a file is in a slice exactly when its row is.

use fieldsync_proto::ColumnType;
use fieldsync_proto::Value;
use fieldsync_proto::time::Timestamp;

use crate::plan::{SlicePlan, quote_ident, quote_literal};
use crate::{Result, StoreError, TableInfo};

/// A file attached to a row of the main database.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileRecord {
    pub id: i64,
    pub table: String,
    /// The row's primary key, as text (an integer key in decimal).
    pub key: String,
    pub name: String,
    pub size: u64,
    /// SHA-256 of the content, lowercase hex: what the file store names it by.
    pub sha256: String,
    pub content_type: String,
    pub added_by: String,
    pub added_at: Timestamp,
}

/// What an attachment records (the id is the store's).
#[derive(Debug, Clone)]
pub struct NewFile {
    pub table: String,
    pub key: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub added_by: String,
    pub added_at: Timestamp,
}

/// Whether `text` is a SHA-256 as the file store names content: 64 lowercase hex digits.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks an attachment before it is stored: sane names, a tracked table, a key the
/// primary key can hold (returned as the value to look the row up by).
pub(crate) fn check_new(file: &NewFile, info: Option<TableInfo>) -> Result<(TableInfo, Value)> {
    let invalid = |m: String| StoreError::Invalid(m);
    if !is_sha256(&file.sha256) {
        return Err(invalid(format!("`{}` is not a SHA-256", file.sha256)));
    }
    if file.name.is_empty() || file.name.contains(['/', '\\', '\0']) || file.name.starts_with('.') {
        return Err(invalid(format!(
            "file name `{}`: a plain name (no folder, not starting with a dot)",
            file.name
        )));
    }
    let info = info.ok_or_else(|| {
        StoreError::NotFound(format!(
            "table `{}`: no such table in the main database",
            file.table
        ))
    })?;
    if !info.tracked {
        return Err(crate::plan::untracked(&file.table));
    }
    let pk = info
        .column(&info.primary_key)
        .expect("primary key is a column");
    let key = match pk.column_type {
        ColumnType::Integer => Value::Integer(file.key.parse().map_err(|_| {
            invalid(format!(
                "key `{}`: table `{}` has an integer primary key",
                file.key, file.table
            ))
        })?),
        _ => Value::Text(file.key.clone()),
    };
    Ok((info, key))
}

/// The queries listing the files of a slice's tables `tables` (only content `sha256`,
/// when given): one per table, as each table's condition numbers its placeholders
/// from 1, with that table's binds. `key_as` turns an attachment's key (text) into a
/// value of the table's primary key, given its type and declared type, so the join
/// can use the primary key's index either way: from the slice's rows to their files
/// (a list), or from the files of one content to their rows (a fetch).
pub(crate) fn slice_files_sql(
    plan: &SlicePlan,
    tables: &[String],
    sha256: Option<&str>,
    files_table: &str,
    key_as: &dyn Fn(&str, ColumnType, &str) -> String,
) -> Result<Vec<(String, Vec<Value>)>> {
    if let Some(h) = sha256
        && !is_sha256(h)
    {
        return Err(StoreError::Invalid(format!("`{h}` is not a SHA-256")));
    }
    let only = match sha256 {
        Some(h) => format!(" AND f.sha256 = {}", quote_literal(h)),
        None => String::new(),
    };
    Ok(plan
        .tables
        .iter()
        .filter(|t| tables.contains(&t.schema.name))
        .map(|t| {
            let table = quote_ident(&t.schema.name);
            // The primary key is the plan's first column.
            let pk = format!("{table}.{}", quote_ident(&t.schema.primary_key));
            let key = key_as("f.pk", t.schema.columns[0].column_type, &t.declared[0]);
            let sql = format!(
                "SELECT f.id, f.tbl, f.pk, f.name, f.size, f.sha256, f.content_type, f.added_by, f.added_at
                 FROM {files_table} f JOIN {table} ON {pk} = {key}
                 WHERE f.tbl = {}{only} AND {} ORDER BY f.id",
                quote_literal(&t.schema.name),
                t.condition
            );
            (sql, t.binds.clone())
        })
        .collect())
}
