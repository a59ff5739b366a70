//! The audit log on PostgreSQL (`fieldsync.audit`).

use super::PgStore;
use crate::{AuditRecord, Audits, NewAudit, Result};
use fieldsync_proto::time::Timestamp;

impl Audits for PgStore {
    fn audit_record(&self, e: &NewAudit<'_>, keep: i64) -> Result<()> {
        // One statement: the new entry, and all but the newest `keep` gone (ids from a
        // sequence may skip numbers, so at most `keep` remain).
        self.conn()?.execute(
            "WITH new AS (
                 INSERT INTO fieldsync.audit (at, kind, actor, subject, address, detail)
                 VALUES ((extract(epoch FROM clock_timestamp()) * 1000)::int8,
                         $1, $2, $3, $4, $5)
                 RETURNING id)
             DELETE FROM fieldsync.audit WHERE id <= (SELECT id FROM new) - $6",
            &[
                &e.kind,
                &e.actor,
                &e.subject,
                &e.address,
                &e.detail,
                &keep.max(1),
            ],
        )?;
        Ok(())
    }

    fn audit_list(&self, limit: i64) -> Result<Vec<AuditRecord>> {
        Ok(self
            .conn()?
            .query(
                "SELECT id, at, kind, actor, subject, address, detail FROM fieldsync.audit
                 ORDER BY id DESC LIMIT $1",
                &[&limit.max(0)],
            )?
            .into_iter()
            .map(|r| AuditRecord {
                id: r.get(0),
                at: Timestamp::from_unix_ms(r.get(1)),
                kind: r.get(2),
                actor: r.get(3),
                subject: r.get(4),
                address: r.get(5),
                detail: r.get(6),
            })
            .collect())
    }
}
