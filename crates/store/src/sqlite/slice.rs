//! The slice stream on SQLite: counts, rows and cursor from one read transaction, and
//! the cursor recorded as the device's base.

use std::time::Duration;

use rusqlite::params;

use super::SqliteDialect;
use super::{SqliteStore, to_sql_value, value_ref};
use crate::Slices;
use crate::dialect::SqlDialect;
use crate::plan::SlicePlan;
use crate::{Result, SliceSink};
use fieldsync_proto::wire::Cursor;

impl SqliteStore {
    /// Records a download's cursor as a base `device` may send changes on, by a second
    /// connection (the download's read snapshot stays open). An office transaction
    /// holding the write lock must not stall the download: then a thread records it
    /// as soon as the lock is free (the device needs the base only at its next send).
    fn record_base(&self, device: &str, cursor: i64) -> Result<()> {
        const SQL: &str =
            "INSERT OR IGNORE INTO fieldsync_bases (device, low, high) VALUES (?1, ?2, ?2)";
        let conn = self.conn()?;
        conn.busy_timeout(Duration::from_millis(200))?;
        match conn.execute(SQL, params![device, cursor]) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                let (store, device) = (SqliteStore::new(self.path.clone()), device.to_string());
                std::thread::spawn(move || {
                    let recorded = store.conn().and_then(|c| {
                        c.busy_timeout(Duration::from_secs(600))?;
                        Ok(c.execute(SQL, params![device, cursor])?)
                    });
                    if let Err(e) = recorded {
                        eprintln!("fieldsync server: recording the base of a download: {e}");
                    }
                });
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Slices for SqliteStore {
    fn dialect(&self) -> &'static dyn SqlDialect {
        &SqliteDialect
    }

    fn stream_slice(&self, plan: &SlicePlan, sink: &mut dyn SliceSink) -> Result<Vec<u64>> {
        let mut conn = self.conn()?;
        // One read transaction: counts, rows and cursor all come from one snapshot.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
        let cursor: i64 = tx.query_row(
            "SELECT coalesce(max(version), 0) FROM fieldsync_rows",
            [],
            |r| r.get(0),
        )?;
        let mut counts = Vec::with_capacity(plan.tables.len());
        for t in &plan.tables {
            let binds: Vec<_> = t.binds.iter().map(to_sql_value).collect();
            let n: i64 = tx.query_row(
                &t.count_sql,
                rusqlite::params_from_iter(binds.iter()),
                |r| r.get(0),
            )?;
            counts.push(n as u64);
        }
        self.record_base(&plan.device, cursor)?;
        sink.begin(Cursor::from_raw(cursor), &counts)?;
        let mut sent = Vec::with_capacity(plan.tables.len());
        for (idx, t) in plan.tables.iter().enumerate() {
            let binds: Vec<_> = t.binds.iter().map(to_sql_value).collect();
            let mut stmt = tx.prepare(&t.select_sql)?;
            let width = t.schema.columns.len();
            let mut rows = stmt.query(rusqlite::params_from_iter(binds.iter()))?;
            let mut n = 0u64;
            while let Some(row) = rows.next()? {
                // Columns 0..width exist: the statement selects exactly them.
                sink.row(
                    idx,
                    &mut (0..width).map(|i| value_ref(row.get_ref_unwrap(i))),
                )?;
                n += 1;
            }
            sent.push(n);
        }
        tx.commit()?;
        Ok(sent)
    }
}
