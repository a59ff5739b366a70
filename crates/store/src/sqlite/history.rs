//! What happened, on SQLite: the sync history and the conflict log.

use fieldsync_proto::wire::{SyncOp, Trigger};
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, table_info, to_sql_value};
use crate::plan::quote_ident;
use crate::{ConflictRecord, History, HistoryRecord, Result, StoreError};

impl History for SqliteStore {
    fn conflicts_list(&self) -> Result<Vec<ConflictRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("{CONFLICT_SELECT} ORDER BY id"))?;
        let rows = stmt
            .query_map([], conflict_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn conflict_resolve(&self, id: i64, take_device: bool, at: &str) -> Result<ConflictRecord> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let c = tx
            .query_row(
                &format!("{CONFLICT_SELECT} WHERE id = ?1"),
                [id],
                conflict_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("no conflict {id}")))?;
        if let Some(when) = &c.resolved_at {
            return Err(StoreError::Invalid(format!(
                "conflict {id} was resolved at {when}"
            )));
        }
        let info = table_info(&tx, &c.table)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", c.table)))?;
        let table = quote_ident(&info.name);
        let pk = quote_ident(&info.primary_key);
        let exists: bool = tx.query_row(
            &format!("SELECT count(*) FROM {table} WHERE {pk} = ?1"),
            [to_sql_value(&c.key)],
            |r| r.get(0),
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
        let refuse = |e: rusqlite::Error| {
            StoreError::Invalid(format!(
                "conflict {id}: the main database refused the values: {e}"
            ))
        };
        if delete {
            tx.execute(
                &format!("DELETE FROM {table} WHERE {pk} = ?1"),
                [to_sql_value(&c.key)],
            )
            .map_err(refuse)?;
        } else if !values.is_empty() {
            let cols: Vec<&String> = values.keys().filter(|k| **k != info.primary_key).collect();
            if exists {
                if !cols.is_empty() {
                    let sets: Vec<String> = cols
                        .iter()
                        .map(|k| format!("{} = ?", quote_ident(k)))
                        .collect();
                    let binds: Vec<_> = cols
                        .iter()
                        .map(|k| to_sql_value(&values[*k]))
                        .chain([to_sql_value(&c.key)])
                        .collect();
                    tx.execute(
                        &format!("UPDATE {table} SET {} WHERE {pk} = ?", sets.join(", ")),
                        rusqlite::params_from_iter(binds),
                    )
                    .map_err(refuse)?;
                }
            } else {
                let names: Vec<String> = std::iter::once(pk.clone())
                    .chain(cols.iter().map(|k| quote_ident(k)))
                    .collect();
                let binds: Vec<_> = std::iter::once(to_sql_value(&c.key))
                    .chain(cols.iter().map(|k| to_sql_value(&values[*k])))
                    .collect();
                let marks = vec!["?"; names.len()].join(", ");
                tx.execute(
                    &format!(
                        "INSERT INTO {table} ({}) VALUES ({marks})",
                        names.join(", ")
                    ),
                    rusqlite::params_from_iter(binds),
                )
                .map_err(refuse)?;
            }
        }
        let take = if take_device { "device" } else { "server" };
        tx.execute(
            "UPDATE fieldsync_conflicts SET resolved_at = ?1, resolved_take = ?2 WHERE id = ?3",
            params![at, take, id],
        )?;
        tx.commit()?;
        Ok(ConflictRecord {
            resolved_at: Some(at.to_string()),
            resolved_take: Some(take.to_string()),
            ..c
        })
    }

    fn history_record(&self, s: &HistoryRecord) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO fieldsync_sync_sessions (device, user, task, op, kind, result, message, rows_down, rows_up,
                 bytes_down, bytes_up, conflicts, started_at, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                s.device, s.user, s.task, s.op.as_str(), s.trigger.as_str(), s.result, s.message, s.rows_down as i64, s.rows_up as i64,
                s.bytes_down as i64, s.bytes_up as i64, s.conflicts as i64, s.started_at, s.duration_ms as i64
            ],
        )?;
        Ok(())
    }

    fn history(&self) -> Result<Vec<HistoryRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT device, user, task, op, kind, result, message, rows_down, rows_up, bytes_down, bytes_up, conflicts,
                    started_at, duration_ms FROM fieldsync_sync_sessions ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(HistoryRecord {
                    device: r.get(0)?,
                    user: r.get(1)?,
                    task: r.get(2)?,
                    op: history_name(r, 3, SyncOp::parse)?,
                    trigger: history_name(r, 4, Trigger::parse)?,
                    result: r.get(5)?,
                    message: r.get(6)?,
                    rows_down: r.get::<_, i64>(7)? as u64,
                    rows_up: r.get::<_, i64>(8)? as u64,
                    bytes_down: r.get::<_, i64>(9)? as u64,
                    bytes_up: r.get::<_, i64>(10)? as u64,
                    conflicts: r.get::<_, i64>(11)? as u64,
                    started_at: r.get(12)?,
                    duration_ms: r.get::<_, i64>(13)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

const CONFLICT_SELECT: &str = "SELECT id, at, device, user, task, tbl, key, op, kind, policy, resolution,
    device_values, server_values, base_version, server_version, resolved_at, resolved_take FROM fieldsync_conflicts";

fn conflict_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConflictRecord> {
    let json = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    let bad = |i: usize, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(ConflictRecord {
        id: r.get(0)?,
        at: r.get(1)?,
        device: r.get(2)?,
        user: r.get(3)?,
        task: r.get(4)?,
        table: r.get(5)?,
        key: serde_json::from_str(&json(6)?).map_err(|e| bad(6, e))?,
        op: r.get(7)?,
        kind: r.get(8)?,
        policy: r.get(9)?,
        resolution: r.get(10)?,
        device_values: serde_json::from_str(&json(11)?).map_err(|e| bad(11, e))?,
        server_values: serde_json::from_str(&json(12)?).map_err(|e| bad(12, e))?,
        base_version: r.get(13)?,
        server_version: r.get(14)?,
        resolved_at: r.get(15)?,
        resolved_take: r.get(16)?,
    })
}

/// A sync-history name column read back as its type; a name fieldsync never writes is
/// a conversion error.
fn history_name<T>(
    row: &rusqlite::Row<'_>,
    i: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let name: String = row.get(i)?;
    parse(&name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("`{name}` is not a sync-history name").into(),
        )
    })
}
