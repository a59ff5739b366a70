//! Resolving a logged conflict, engine-neutral: the device's or the server's logged
//! values are written to the row (an update, a re-insert or a delete, as the row
//! stands now), and the conflict is marked resolved, in one transaction the engine
//! supplies ([`ResolveTx`]) and commits when [`resolve`] returns `Ok`. The row write
//! goes through the table's tracking triggers like any office write.

use fieldsync_proto::Value;
use fieldsync_proto::time::Timestamp;

use crate::dialect::SqlDialect;
use crate::plan::quote_ident;
use crate::{ConflictRecord, Result, StoreError, TableInfo};

/// A value to bind, with the declared type of the column it is written to or compared
/// with.
pub(crate) type Bound<'v> = (&'v Value, &'v str);

/// What resolving needs of an engine, inside one open transaction.
pub(crate) trait ResolveTx {
    fn dialect(&self) -> &'static dyn SqlDialect;
    /// The logged conflict `id`, held against a concurrent resolution.
    fn conflict(&mut self, id: i64) -> Result<Option<ConflictRecord>>;
    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>>;
    /// Runs a query: whether it returned a row.
    fn exists(&mut self, sql: &str, binds: &[Bound<'_>]) -> Result<bool>;
    /// Runs a write to the organisation's table; an error is the database's
    /// refusal, in its own words.
    fn write(&mut self, sql: &str, binds: &[Bound<'_>]) -> Result<(), String>;
    /// Records the resolution in the conflict log.
    fn mark_resolved(&mut self, id: i64, at: Timestamp, take: &str) -> Result<()>;
}

/// Applies the logged device (`take_device`) or server values of conflict `id` and
/// marks it resolved; returns the conflict as now logged.
pub(crate) fn resolve(
    tx: &mut dyn ResolveTx,
    id: i64,
    take_device: bool,
    at: Timestamp,
) -> Result<ConflictRecord> {
    let c = tx
        .conflict(id)?
        .ok_or_else(|| StoreError::NotFound(format!("no conflict {id}")))?;
    if let Some(when) = &c.resolved_at {
        return Err(StoreError::Invalid(format!(
            "conflict {id} was resolved at {when}"
        )));
    }
    let info = tx
        .table_info(&c.table)?
        .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", c.table)))?;
    let dialect = tx.dialect();
    let table = quote_ident(&info.name);
    let pk = quote_ident(&info.primary_key);
    let key_type = info
        .column(&info.primary_key)
        .map_or("", |k| k.declared_type.as_str());
    let key_param = dialect.param(1, key_type);
    let key: Bound<'_> = (&c.key, key_type);
    let exists = tx.exists(
        &format!(
            "SELECT 1 FROM {table} WHERE {pk} = {key_param}{}",
            dialect.lock_row()
        ),
        &[key],
    )?;
    if !exists && take_device && c.op != "insert" && c.op != "delete" {
        return Err(StoreError::Invalid(format!(
            "conflict {id}: the row was deleted in the main database; the device's logged values are an \
             update of some columns and cannot re-create it (re-enter the row if it is still needed)"
        )));
    }
    let (values, delete) = if take_device {
        (&c.device_values, c.op == "delete")
    } else {
        (&c.server_values, false)
    };
    let refuse = |e: String| {
        StoreError::Invalid(format!(
            "conflict {id}: the main database refused the values: {e}"
        ))
    };
    if delete {
        tx.write(
            &format!("DELETE FROM {table} WHERE {pk} = {key_param}"),
            &[key],
        )
        .map_err(refuse)?;
    } else if !values.is_empty() {
        let cols: Vec<&String> = values.keys().filter(|k| **k != info.primary_key).collect();
        let mut binds = vec![key];
        let mut exprs = Vec::new();
        for k in &cols {
            let declared = info
                .column(k)
                .map(|c| c.declared_type.as_str())
                .ok_or_else(|| {
                    StoreError::Invalid(format!("conflict {id}: no column `{k}` any more"))
                })?;
            binds.push((&values[*k], declared));
            exprs.push((quote_ident(k), dialect.param(binds.len(), declared)));
        }
        if exists {
            if !cols.is_empty() {
                let sets: Vec<String> = exprs.iter().map(|(c, p)| format!("{c} = {p}")).collect();
                tx.write(
                    &format!(
                        "UPDATE {table} SET {} WHERE {pk} = {key_param}",
                        sets.join(", ")
                    ),
                    &binds,
                )
                .map_err(refuse)?;
            }
        } else {
            let names: Vec<String> = std::iter::once(pk.clone())
                .chain(exprs.iter().map(|(c, _)| c.clone()))
                .collect();
            let marks: Vec<String> = std::iter::once(key_param.clone())
                .chain(exprs.iter().map(|(_, p)| p.clone()))
                .collect();
            tx.write(
                &format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    names.join(", "),
                    marks.join(", ")
                ),
                &binds,
            )
            .map_err(refuse)?;
        }
    }
    let take = if take_device { "device" } else { "server" };
    tx.mark_resolved(id, at, take)?;
    Ok(ConflictRecord {
        resolved_at: Some(at),
        resolved_take: Some(take.to_string()),
        ..c
    })
}
