//! The slice stream on PostgreSQL: counts, rows and the base from one REPEATABLE
//! READ snapshot, rows through a portal.

use postgres::IsolationLevel;

use super::PgStore;
use super::types::{self, Bind, Kind};
use crate::Slices;
use crate::dialect::SqlDialect;
use crate::plan::SlicePlan;
use crate::{Result, SliceSink};
use fieldsync_proto::wire::Cursor;

impl Slices for PgStore {
    fn dialect(&self) -> &'static dyn SqlDialect {
        &types::PgDialect
    }

    fn stream_slice(&self, plan: &SlicePlan, sink: &mut dyn SliceSink) -> Result<Vec<u64>> {
        let mut c = self.conn()?;
        // One REPEATABLE READ transaction: counts, rows and the base all come from one
        // snapshot; its first statement records that snapshot as the device's base.
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()?;
        let cursor: i64 = tx
            .query_one(
                "INSERT INTO fieldsync.bases (snap, device) VALUES (pg_current_snapshot(), $1) RETURNING id",
                &[&plan.device],
            )?
            .get(0);
        let mut counts = Vec::with_capacity(plan.tables.len());
        for t in &plan.tables {
            let binds: Vec<Bind<'_>> = t.binds.iter().map(Bind).collect();
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                binds.iter().map(|b| b as _).collect();
            let n: i64 = tx.query_one(&t.count_sql, &refs)?.get(0);
            counts.push(n as u64);
        }
        sink.begin(Cursor::from_raw(cursor), &counts)?;
        let mut sent = Vec::with_capacity(plan.tables.len());
        for (idx, t) in plan.tables.iter().enumerate() {
            let kinds: Vec<Option<Kind>> = t
                .schema
                .columns
                .iter()
                .zip(&t.declared)
                .map(|(_, d)| types::kind(d))
                .collect();
            let binds: Vec<Bind<'_>> = t.binds.iter().map(Bind).collect();
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                binds.iter().map(|b| b as _).collect();
            // A portal read in batches: memory stays flat whatever the slice's size.
            let portal = tx.bind(&t.select_sql, &refs)?;
            let mut n = 0u64;
            loop {
                let batch = tx.query_portal(&portal, 2000)?;
                if batch.is_empty() {
                    break;
                }
                for row in &batch {
                    let mut values = (0..kinds.len()).map(|i| types::value_ref(row, i, kinds[i]));
                    sink.row(idx, &mut values)?;
                    n += 1;
                }
            }
            sent.push(n);
        }
        tx.commit()?;
        Ok(sent)
    }
}
