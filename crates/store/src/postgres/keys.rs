//! Blocks of integer keys for devices on PostgreSQL (see `crate::keys`): values
//! taken with `nextval` from the key's own sequence, so no office `nextval`, at the
//! same moment or later, can return one of them; no lock is taken. Values a
//! concurrent writer took in between split the reservation into several blocks.

use fieldsync_proto::wire::KeyBlock;
use postgres::GenericClient;

use super::{PgStore, in_tx};
use crate::keys::{needs_top_up, runs};
use crate::{KeyBlocks, Result, StoreError};

/// The device's blocks of `table` with keys not known used; none for a revoked or
/// unknown device.
fn held(c: &mut impl GenericClient, device: &str, table: &str) -> Result<Vec<KeyBlock>> {
    Ok(c.query(
        "SELECT b.first_key, b.last_key, b.next_key FROM fieldsync.key_blocks b
             JOIN fieldsync.devices d ON d.id = b.device AND NOT d.revoked
             WHERE b.device = $1 AND b.tbl = $2 AND b.next_key <= b.last_key
             ORDER BY b.first_key",
        &[&device, &table],
    )?
    .iter()
    .map(|r| KeyBlock {
        table: table.to_string(),
        first: r.get(0),
        last: r.get(1),
        next: r.get(2),
    })
    .collect())
}

impl KeyBlocks for PgStore {
    fn key_blocks(&self, device: &str, table: &str, block_keys: i64) -> Result<Vec<KeyBlock>> {
        let mut c = self.conn()?;
        let blocks = held(&mut *c, device, table)?;
        if !needs_top_up(&blocks, block_keys) {
            return Ok(blocks);
        }
        in_tx(&mut c, |tx| {
            let active: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM fieldsync.devices WHERE id = $1 AND NOT revoked)",
                    &[&device],
                )?
                .get(0);
            if !active {
                return Ok(Vec::new());
            }
            let info = super::table_info(tx, table)?
                .ok_or_else(|| StoreError::NotFound(format!("table `{table}` is gone")))?;
            let Some(sequence) = info.key_source else {
                return Err(StoreError::Invalid(format!(
                    "table `{}`: devices get integer keys only from the key's sequence \
                     (serial or identity)",
                    info.name
                )));
            };
            // `nextval` is never rolled back: a value taken here is never returned
            // again, whatever becomes of this transaction.
            let values: Vec<i64> = tx
                .query(
                    "SELECT nextval($1::text::regclass) FROM generate_series(1, $2::bigint)",
                    &[&sequence, &block_keys],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for (first, last) in runs(values) {
                tx.execute(
                    "INSERT INTO fieldsync.key_blocks (device, tbl, first_key, last_key, next_key)
                     VALUES ($1, $2, $3, $4, $3)",
                    &[&device, &info.name, &first, &last],
                )?;
            }
            held(tx, device, table)
        })
    }

    fn keys_used(&self, device: &str, table: &str, next: i64) -> Result<()> {
        self.conn()?.execute(
            "UPDATE fieldsync.key_blocks SET next_key = least($3, last_key + 1)
             WHERE device = $1 AND tbl = $2 AND first_key < $3 AND next_key < least($3, last_key + 1)",
            &[&device, &table, &next],
        )?;
        Ok(())
    }
}

/// Claims an inserted key for the device (see `UploadTx::claim_key`): `$3` within
/// one of its blocks of table `$2`; moves the block's next key past it.
pub(super) const CLAIM_KEY: &str =
    "UPDATE fieldsync.key_blocks SET next_key = greatest(next_key, $3 + 1)
     WHERE device = $1 AND tbl = $2 AND $3 BETWEEN first_key AND last_key
       AND EXISTS (SELECT 1 FROM fieldsync.devices WHERE id = $1 AND NOT revoked)
     RETURNING 1";
