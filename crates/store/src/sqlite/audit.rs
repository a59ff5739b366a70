//! The audit log on SQLite (`fieldsync_audit`).

use rusqlite::params;

use super::SqliteStore;
use crate::{AuditRecord, Audits, NewAudit, Result};
use fieldsync_proto::time::Timestamp;

impl Audits for SqliteStore {
    fn audit_record(&self, e: &NewAudit<'_>, keep: i64) -> Result<()> {
        // Not given back to the idle ones: its setting below is this call's only.
        let mut conn = self.conn()?.into_inner();
        // No flush to disk of its own, so that the server's audit writer keeps up with a
        // crowd of refusals: the entry reaches the disk with the next checkpoint or
        // flushed commit (a power cut may lose the last few entries, never the database).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO fieldsync_audit (at, kind, actor, subject, address, detail)
             VALUES (CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER),
                     ?1, ?2, ?3, ?4, ?5)",
            params![e.kind, e.actor, e.subject, e.address, e.detail],
        )?;
        // AUTOINCREMENT ids follow one another: everything `keep` behind the new one.
        let id = tx.last_insert_rowid();
        tx.execute(
            "DELETE FROM fieldsync_audit WHERE id <= ?1",
            [id.saturating_sub(keep.max(1))],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn audit_list(&self, limit: i64) -> Result<Vec<AuditRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, at, kind, actor, subject, address, detail FROM fieldsync_audit
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit.max(0)], |r| {
            Ok(AuditRecord {
                id: r.get(0)?,
                at: Timestamp::from_unix_ms(r.get(1)?),
                kind: r.get(2)?,
                actor: r.get(3)?,
                subject: r.get(4)?,
                address: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
