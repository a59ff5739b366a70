//! What happened, on PostgreSQL: the sync history and the conflict log.

use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{SyncOp, Trigger};

use postgres::Transaction;
use postgres::types::ToSql;

use super::types::{self, Param};
use super::{PgStore, in_tx, opt_time_at, pg_message, table_info, time_at};
use crate::dialect::SqlDialect;
use crate::resolve::{self, Bound, ResolveTx};
use crate::{ConflictRecord, DeviceSeen, History, HistoryRecord, Result, StoreError, TableInfo};

impl History for PgStore {
    fn conflicts_list(&self) -> Result<Vec<ConflictRecord>> {
        let rows = self
            .conn()?
            .query(&format!("{CONFLICT_SELECT} ORDER BY id"), &[])?;
        rows.iter().map(conflict_row).collect()
    }

    fn conflict_resolve(
        &self,
        id: i64,
        take_device: bool,
        at: Timestamp,
    ) -> Result<ConflictRecord> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            resolve::resolve(&mut Resolving(tx), id, take_device, at)
        })
    }

    fn history_record(&self, s: &HistoryRecord) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO fieldsync.sync_sessions (device, user_name, task, op, kind, result, message, rows_down,
                 rows_up, bytes_down, bytes_up, conflicts, started_at, duration_ms, whole, full_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            &[
                &s.device,
                &s.user,
                &s.task,
                &s.op.as_str(),
                &s.trigger.as_str(),
                &s.result,
                &s.message,
                &(s.rows_down as i64),
                &(s.rows_up as i64),
                &(s.bytes_down as i64),
                &(s.bytes_up as i64),
                &(s.conflicts as i64),
                &s.started_at.to_string(),
                &(s.duration_ms as i64),
                &s.full,
                &s.full_reason,
            ],
        )?;
        Ok(())
    }

    fn device_seen(&self, s: &DeviceSeen) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO fieldsync.devices_seen (device, user_name, at, task, pending)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (device) DO UPDATE SET user_name = excluded.user_name, at = excluded.at,
                 task = excluded.task, pending = excluded.pending",
            &[
                &s.device,
                &s.user,
                &s.at.to_string(),
                &s.task,
                &s.pending.map(|n| n as i64),
            ],
        )?;
        Ok(())
    }

    fn devices_seen(&self) -> Result<Vec<DeviceSeen>> {
        let rows = self.conn()?.query(
            "SELECT device, user_name, at, task, pending FROM fieldsync.devices_seen ORDER BY device",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                Ok(DeviceSeen {
                    device: r.try_get(0)?,
                    user: r.try_get(1)?,
                    at: time_at(r, 2, "at")?,
                    task: r.try_get(3)?,
                    pending: r.try_get::<_, Option<i64>>(4)?.map(|n| n.max(0) as u64),
                })
            })
            .collect()
    }

    fn history(&self) -> Result<Vec<HistoryRecord>> {
        let rows = self.conn()?.query(
            "SELECT device, user_name, task, op, kind, result, message, rows_down, rows_up, bytes_down,
                    bytes_up, conflicts, started_at, duration_ms, whole, full_reason
             FROM fieldsync.sync_sessions ORDER BY id",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                let name = |i: usize| r.get::<_, String>(i);
                let op = name(3);
                let trigger = name(4);
                Ok(HistoryRecord {
                    device: r.get(0),
                    user: r.get(1),
                    task: r.get(2),
                    op: SyncOp::parse(&op).ok_or_else(|| bad_history_name(&op))?,
                    trigger: Trigger::parse(&trigger).ok_or_else(|| bad_history_name(&trigger))?,
                    result: r.get(5),
                    message: r.get(6),
                    rows_down: r.get::<_, i64>(7) as u64,
                    rows_up: r.get::<_, i64>(8) as u64,
                    bytes_down: r.get::<_, i64>(9) as u64,
                    bytes_up: r.get::<_, i64>(10) as u64,
                    conflicts: r.get::<_, i64>(11) as u64,
                    started_at: time_at(r, 12, "started_at")?,
                    duration_ms: r.get::<_, i64>(13) as u64,
                    full: r.get(14),
                    full_reason: r.get(15),
                })
            })
            .collect()
    }
}

/// Resolving a conflict in a PostgreSQL transaction: the conflict's log row and the
/// table's row are held `FOR UPDATE` until it commits.
struct Resolving<'a, 't>(&'a mut Transaction<'t>);

/// The bound values, as text cast to each column's type.
fn bound(binds: &[Bound<'_>]) -> Vec<Param> {
    binds
        .iter()
        .map(|(v, d)| types::write_value(v, d))
        .collect()
}

impl ResolveTx for Resolving<'_, '_> {
    fn dialect(&self) -> &'static dyn SqlDialect {
        &types::PgDialect
    }

    fn conflict(&mut self, id: i64) -> Result<Option<ConflictRecord>> {
        self.0
            .query_opt(
                &format!("{CONFLICT_SELECT} WHERE id = $1 FOR UPDATE"),
                &[&id],
            )?
            .map(|r| conflict_row(&r))
            .transpose()
    }

    fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>> {
        table_info(self.0, table)
    }

    fn exists(&mut self, sql: &str, binds: &[Bound<'_>]) -> Result<bool> {
        let params = bound(binds);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        Ok(self.0.query_opt(sql, &refs)?.is_some())
    }

    fn write(&mut self, sql: &str, binds: &[Bound<'_>]) -> Result<(), String> {
        let params = bound(binds);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        self.0
            .execute(sql, &refs)
            .map(drop)
            .map_err(|e| pg_message(&e))
    }

    fn mark_resolved(&mut self, id: i64, at: Timestamp, take: &str) -> Result<()> {
        self.0.execute(
            "UPDATE fieldsync.conflicts SET resolved_at = $1, resolved_take = $2 WHERE id = $3",
            &[&at.to_string(), &take, &id],
        )?;
        Ok(())
    }
}

const CONFLICT_SELECT: &str = "SELECT id, at, device, user_name, task, tbl, key, op, kind, policy, resolution,
    device_values, server_values, base_version, server_version, resolved_at, resolved_take FROM fieldsync.conflicts";

fn conflict_row(r: &postgres::Row) -> Result<ConflictRecord> {
    fn json<T: serde::de::DeserializeOwned>(r: &postgres::Row, i: usize) -> Result<T> {
        serde_json::from_str(r.get(i))
            .map_err(|e| StoreError::Db(format!("conflict log: unreadable column {i}: {e}")))
    }
    Ok(ConflictRecord {
        id: r.get(0),
        at: time_at(r, 1, "at")?,
        device: r.get(2),
        user: r.get(3),
        task: r.get(4),
        table: r.get(5),
        key: json(r, 6)?,
        op: r.get(7),
        kind: r.get(8),
        policy: r.get(9),
        resolution: r.get(10),
        device_values: json(r, 11)?,
        server_values: json(r, 12)?,
        base_version: r.get(13),
        server_version: r.get(14),
        resolved_at: opt_time_at(r, 15, "resolved_at")?,
        resolved_take: r.get(16),
    })
}

fn bad_history_name(name: &str) -> StoreError {
    StoreError::Db(format!(
        "`{name}` in the sync history is not a name fieldsync writes"
    ))
}
