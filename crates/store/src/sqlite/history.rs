//! What happened, on SQLite: the sync history and the conflict log.

use fieldsync_proto::wire::{SyncOp, Trigger};
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::{SqliteDialect, SqliteStore, opt_time_at, table_info, time_at, to_sql_value};
use crate::dialect::SqlDialect;
use crate::resolve::{self, Bound, ResolveTx};
use crate::{ConflictRecord, DeviceSeen, History, HistoryRecord, Result, TableInfo};
use fieldsync_proto::time::Timestamp;

impl History for SqliteStore {
    fn conflicts_list(&self) -> Result<Vec<ConflictRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("{CONFLICT_SELECT} ORDER BY id"))?;
        let rows = stmt
            .query_map([], conflict_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn conflict_resolve(
        &self,
        id: i64,
        take_device: bool,
        at: Timestamp,
    ) -> Result<ConflictRecord> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let resolved = resolve::resolve(&mut Resolving(&tx), id, take_device, at)?;
        tx.commit()?;
        Ok(resolved)
    }

    fn history_record(&self, s: &HistoryRecord) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO fieldsync_sync_sessions (device, user, task, op, kind, result, message, rows_down, rows_up,
                 bytes_down, bytes_up, conflicts, started_at, duration_ms, whole, full_reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                s.device, s.user, s.task, s.op.as_str(), s.trigger.as_str(), s.result, s.message, s.rows_down as i64, s.rows_up as i64,
                s.bytes_down as i64, s.bytes_up as i64, s.conflicts as i64, s.started_at.to_string(), s.duration_ms as i64,
                s.full, s.full_reason
            ],
        )?;
        Ok(())
    }

    fn device_seen(&self, s: &DeviceSeen) -> Result<()> {
        // Informational, written while a device's request waits: an office program
        // holding the write lock costs it at most a moment, then the showing waits
        // for the device's next request.
        let conn = self.conn()?;
        conn.busy_timeout(std::time::Duration::from_millis(200))?;
        let written = conn.execute(
            "INSERT INTO fieldsync_devices_seen (device, user, at, task, pending) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (device) DO UPDATE SET user = excluded.user, at = excluded.at,
                 task = excluded.task, pending = excluded.pending",
            params![s.device, s.user, s.at.to_string(), s.task, s.pending.map(|n| n as i64)],
        );
        match written {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn devices_seen(&self) -> Result<Vec<DeviceSeen>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT device, user, at, task, pending FROM fieldsync_devices_seen ORDER BY device",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeviceSeen {
                    device: r.get(0)?,
                    user: r.get(1)?,
                    at: time_at(r, 2, "at")?,
                    task: r.get(3)?,
                    pending: r.get::<_, Option<i64>>(4)?.map(|n| n.max(0) as u64),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn history(&self) -> Result<Vec<HistoryRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT device, user, task, op, kind, result, message, rows_down, rows_up, bytes_down, bytes_up, conflicts,
                    started_at, duration_ms, whole, full_reason FROM fieldsync_sync_sessions ORDER BY id",
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
                    started_at: time_at(r, 12, "started_at")?,
                    duration_ms: r.get::<_, i64>(13)? as u64,
                    full: r.get(14)?,
                    full_reason: r.get(15)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// Resolving a conflict in SQLite's IMMEDIATE transaction (it holds the database, so
/// no row needs a lock of its own).
struct Resolving<'c>(&'c Connection);

/// The bound values, as stored.
fn bound<'v>(binds: &'v [Bound<'_>]) -> impl Iterator<Item = ToSqlOutput<'v>> {
    binds.iter().map(|(v, _)| to_sql_value(v))
}

impl ResolveTx for Resolving<'_> {
    fn dialect(&self) -> &'static dyn SqlDialect {
        &SqliteDialect
    }

    fn conflict(&mut self, id: i64) -> Result<Option<ConflictRecord>> {
        Ok(self
            .0
            .query_row(
                &format!("{CONFLICT_SELECT} WHERE id = ?1"),
                [id],
                conflict_row,
            )
            .optional()?)
    }

    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>> {
        table_info(self.0, table)
    }

    fn exists(&mut self, sql: &str, binds: &[Bound<'_>]) -> Result<bool> {
        Ok(self
            .0
            .query_row(sql, params_from_iter(bound(binds)), |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn write(&mut self, sql: &str, binds: &[Bound<'_>]) -> Result<(), String> {
        self.0
            .execute(sql, params_from_iter(bound(binds)))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn mark_resolved(&mut self, id: i64, at: Timestamp, take: &str) -> Result<()> {
        self.0.execute(
            "UPDATE fieldsync_conflicts SET resolved_at = ?1, resolved_take = ?2 WHERE id = ?3",
            params![at.to_string(), take, id],
        )?;
        Ok(())
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
        at: time_at(r, 1, "at")?,
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
        resolved_at: opt_time_at(r, 15, "resolved_at")?,
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
