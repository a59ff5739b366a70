//! What happened, on PostgreSQL: the sync history and the conflict log.

use fieldsync_proto::wire::{SyncOp, Trigger};

use super::types;
use super::{PgStore, in_tx, pg_message, table_info};
use crate::plan::quote_ident;
use crate::{ConflictRecord, History, HistoryRecord, Result, StoreError};

impl History for PgStore {
    fn conflicts_list(&self) -> Result<Vec<ConflictRecord>> {
        let rows = self
            .conn()?
            .query(&format!("{CONFLICT_SELECT} ORDER BY id"), &[])?;
        rows.iter().map(conflict_row).collect()
    }

    fn conflict_resolve(&self, id: i64, take_device: bool, at: &str) -> Result<ConflictRecord> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let row = tx
                .query_opt(
                    &format!("{CONFLICT_SELECT} WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )?
                .ok_or_else(|| StoreError::NotFound(format!("no conflict {id}")))?;
            let c = conflict_row(&row)?;
            if let Some(when) = &c.resolved_at {
                return Err(StoreError::Invalid(format!(
                    "conflict {id} was resolved at {when}"
                )));
            }
            let info = table_info(tx, &c.table)?
                .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", c.table)))?;
            let table = quote_ident(&info.name);
            let pk_col = info
                .column(&info.primary_key)
                .expect("primary key is a column");
            let pk = quote_ident(&info.primary_key);
            let key_param = types::write_param(1, &pk_col.declared_type);
            let key = types::write_value(&c.key, &pk_col.declared_type);
            let exists = tx
                .query_opt(
                    &format!("SELECT 1 FROM {table} WHERE {pk} = {key_param} FOR UPDATE"),
                    &[&key],
                )?
                .is_some();
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
            let refuse = |e: postgres::Error| {
                StoreError::Invalid(format!(
                    "conflict {id}: the main database refused the values: {}",
                    pg_message(&e)
                ))
            };
            if delete {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE {pk} = {key_param}"),
                    &[&key],
                )
                .map_err(refuse)?;
            } else if !values.is_empty() {
                let cols: Vec<&String> =
                    values.keys().filter(|k| **k != info.primary_key).collect();
                let declared = |k: &str| {
                    info.column(k)
                        .map(|c| c.declared_type.clone())
                        .ok_or_else(|| {
                            StoreError::Invalid(format!("conflict {id}: no column `{k}` any more"))
                        })
                };
                let mut params = vec![key];
                let mut exprs = Vec::new();
                for k in &cols {
                    let d = declared(k)?;
                    params.push(types::write_value(&values[*k], &d));
                    exprs.push((quote_ident(k), types::write_param(params.len(), &d)));
                }
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p as _).collect();
                if exists {
                    if !cols.is_empty() {
                        let sets: Vec<String> =
                            exprs.iter().map(|(c, p)| format!("{c} = {p}")).collect();
                        tx.execute(
                            &format!(
                                "UPDATE {table} SET {} WHERE {pk} = {key_param}",
                                sets.join(", ")
                            ),
                            &refs,
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
                    tx.execute(
                        &format!(
                            "INSERT INTO {table} ({}) VALUES ({})",
                            names.join(", "),
                            marks.join(", ")
                        ),
                        &refs,
                    )
                    .map_err(refuse)?;
                }
            }
            let take = if take_device { "device" } else { "server" };
            tx.execute(
                "UPDATE fieldsync.conflicts SET resolved_at = $1, resolved_take = $2 WHERE id = $3",
                &[&at, &take, &id],
            )?;
            Ok(ConflictRecord {
                resolved_at: Some(at.to_string()),
                resolved_take: Some(take.to_string()),
                ..c
            })
        })
    }

    fn history_record(&self, s: &HistoryRecord) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO fieldsync.sync_sessions (device, user_name, task, op, kind, result, message, rows_down,
                 rows_up, bytes_down, bytes_up, conflicts, started_at, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
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
                &s.started_at,
                &(s.duration_ms as i64),
            ],
        )?;
        Ok(())
    }

    fn history(&self) -> Result<Vec<HistoryRecord>> {
        let rows = self.conn()?.query(
            "SELECT device, user_name, task, op, kind, result, message, rows_down, rows_up, bytes_down,
                    bytes_up, conflicts, started_at, duration_ms FROM fieldsync.sync_sessions ORDER BY id",
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
                    started_at: r.get(12),
                    duration_ms: r.get::<_, i64>(13) as u64,
                })
            })
            .collect()
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
        at: r.get(1),
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
        resolved_at: r.get(15),
        resolved_take: r.get(16),
    })
}

fn bad_history_name(name: &str) -> StoreError {
    StoreError::Db(format!(
        "`{name}` in the sync history is not a name fieldsync writes"
    ))
}
