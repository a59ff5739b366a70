//! Blocks of integer keys for devices on SQLite (see `crate::keys`): reserved above
//! everything the table's AUTOINCREMENT counter, its rows and earlier blocks reached,
//! and the counter moved past them in the same write transaction, so the office's
//! next automatic key (past `sqlite_sequence`) is above every block.

use fieldsync_proto::wire::KeyBlock;
use rusqlite::{Connection, params};

use super::SqliteStore;
use crate::keys::needs_top_up;
use crate::plan::quote_ident;
use crate::{KeyBlocks, Result, StoreError};

/// The device's blocks of `table` with keys not known used; none for a revoked or
/// unknown device.
fn held(conn: &Connection, device: &str, table: &str) -> Result<Vec<KeyBlock>> {
    let mut stmt = conn.prepare_cached(
        "SELECT b.first_key, b.last_key, b.next_key FROM fieldsync_key_blocks b
         JOIN fieldsync_devices d ON d.id = b.device AND d.revoked = 0
         WHERE b.device = ?1 AND b.tbl = ?2 AND b.next_key <= b.last_key ORDER BY b.first_key",
    )?;
    let rows = stmt.query_map([device, table], |r| {
        Ok(KeyBlock {
            table: table.to_string(),
            first: r.get(0)?,
            last: r.get(1)?,
            next: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether the device may hold keys: paired and not revoked.
fn active(conn: &Connection, device: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT count(*) FROM fieldsync_devices WHERE id = ?1 AND revoked = 0",
        [device],
        |r| r.get(0),
    )?)
}

impl KeyBlocks for SqliteStore {
    fn key_blocks(&self, device: &str, table: &str, block_keys: i64) -> Result<Vec<KeyBlock>> {
        let mut conn = self.conn()?;
        let blocks = held(&conn, device, table)?;
        if !needs_top_up(&blocks, block_keys) || !active(&conn, device)? {
            return Ok(blocks);
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !needs_top_up(&held(&tx, device, table)?, block_keys) {
            return held(&tx, device, table);
        }
        let info = super::table_info(&tx, table)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{table}` is gone")))?;
        if info.key_source.is_none() {
            return Err(StoreError::Invalid(format!(
                "table `{}`: devices get integer keys only from an INTEGER PRIMARY KEY \
                 AUTOINCREMENT on SQLite",
                info.name
            )));
        }
        let t = quote_ident(&info.name);
        let top: i64 = tx.query_row(
            &format!(
                "SELECT max(coalesce((SELECT max(rowid) FROM {t}), 0),
                            coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?1), 0),
                            coalesce((SELECT max(last_key) FROM fieldsync_key_blocks WHERE tbl = ?1), 0))"
            ),
            [&info.name],
            |r| r.get(0),
        )?;
        let (first, last) = (top + 1, top + block_keys);
        // The counter past the block: the office's automatic keys start above it.
        let moved = tx.execute(
            "UPDATE sqlite_sequence SET seq = ?2 WHERE name = ?1",
            params![info.name, last],
        )?;
        if moved == 0 {
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
                params![info.name, last],
            )?;
        }
        tx.execute(
            "INSERT INTO fieldsync_key_blocks (device, tbl, first_key, last_key, next_key)
             VALUES (?1, ?2, ?3, ?4, ?3)",
            params![device, info.name, first, last],
        )?;
        let blocks = held(&tx, device, table)?;
        tx.commit()?;
        Ok(blocks)
    }

    fn keys_used(&self, device: &str, table: &str, next: i64) -> Result<()> {
        self.conn()?.execute(
            "UPDATE fieldsync_key_blocks SET next_key = max(next_key, min(?3, last_key + 1))
             WHERE device = ?1 AND tbl = ?2 AND first_key < ?3 AND next_key < min(?3, last_key + 1)",
            params![device, table, next],
        )?;
        Ok(())
    }
}

/// Claims an inserted key for the device (see `UploadTx::claim_key`).
pub(super) fn claim_key(conn: &Connection, device: &str, table: &str, key: i64) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE fieldsync_key_blocks SET next_key = max(next_key, ?3 + 1)
             WHERE device = ?1 AND tbl = ?2 AND ?3 BETWEEN first_key AND last_key
               AND EXISTS (SELECT 1 FROM fieldsync_devices WHERE id = ?1 AND revoked = 0)",
        )?
        .execute(params![device, table, key])?;
    Ok(n > 0)
}
