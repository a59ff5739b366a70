//! Auto-sync tickets on SQLite (`fieldsync_tickets`): issued at a login, renewed by
//! the pair's requests, redeemed once for an automatic session.

use std::time::Duration;

use fieldsync_proto::time::Timestamp;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, opt_time_at, time_at, user_enabled};
use crate::{Redeemed, Result, SessionRecord, SessionScope, TicketRecord, Tickets};

/// The database's clock in milliseconds since the Unix epoch (as `clock_ms`).
const NOW_MS: &str = "SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/// How long a renewal waits for another program's write transaction before giving up:
/// a renewal is not worth holding a request for.
const RENEW_BUSY_WAIT: Duration = Duration::from_millis(250);

impl Tickets for SqliteStore {
    fn ticket_issue(&self, t: &TicketRecord) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let created_at = t.created_at.to_string();
        tx.execute(
            "DELETE FROM fieldsync_tickets WHERE device = ?1 AND user = ?2
             AND (used_at IS NULL OR expires_at < ?3)",
            params![t.device, t.user, created_at],
        )?;
        tx.execute(
            "INSERT INTO fieldsync_tickets (hash, device, user, task, expires_at, used_at, created_at)
             VALUES (?1, ?2, ?3, NULL, ?4, NULL, ?5)",
            params![t.hash, t.device, t.user, t.expires_at.to_string(), created_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn ticket_renew(
        &self,
        device: &str,
        user: &str,
        ttl_ms: i64,
        task: Option<&str>,
    ) -> Result<()> {
        let conn = self.conn()?;
        conn.busy_timeout(RENEW_BUSY_WAIT)?;
        let ttl = format!("+{}.{:03} seconds", ttl_ms / 1000, ttl_ms % 1000);
        conn.execute(
            "UPDATE fieldsync_tickets
             SET expires_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3), task = coalesce(?4, task)
             WHERE device = ?1 AND user = ?2 AND used_at IS NULL",
            params![device, user, ttl, task],
        )?;
        Ok(())
    }

    fn ticket_redeem(
        &self,
        hash: &str,
        device: &str,
        token_hash: &str,
        session_ttl_ms: i64,
    ) -> Result<Redeemed> {
        let mut conn = self.conn()?;
        // One writer at a time: two redeems of one ticket cannot both find it unused.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = Timestamp::from_unix_ms(tx.query_row(NOW_MS, [], |r| r.get(0))?);
        let found = tx
            .query_row(
                "SELECT user, task, expires_at, used_at IS NOT NULL FROM fieldsync_tickets
                 WHERE hash = ?1 AND device = ?2",
                [hash, device],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        time_at(r, 2, "expires_at")?,
                        r.get::<_, bool>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((user, task, expires_at, used)) = found else {
            return Ok(Redeemed::Unknown);
        };
        if used {
            return Ok(Redeemed::Unknown);
        }
        if expires_at <= now {
            return Ok(Redeemed::Expired);
        }
        if !user_enabled(&tx, &user)? {
            return Ok(Redeemed::Disabled(user));
        }
        tx.execute(
            "UPDATE fieldsync_tickets SET used_at = ?2 WHERE hash = ?1",
            [hash, &now.to_string()],
        )?;
        let session = SessionRecord {
            token_hash: token_hash.to_string(),
            device: device.to_string(),
            user,
            created_at: now,
            expires_at: now.plus_ms(session_ttl_ms),
            scope: SessionScope::Auto { task },
        };
        let (scope, scope_task) = crate::catalog::scope_columns(&session.scope);
        tx.execute(
            "INSERT INTO fieldsync_sessions (token_hash, device, user, created_at, expires_at, scope, scope_task)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                session.token_hash,
                session.device,
                session.user,
                session.created_at.to_string(),
                session.expires_at.to_string(),
                scope,
                scope_task
            ],
        )?;
        tx.commit()?;
        Ok(Redeemed::Session(session))
    }

    fn ticket_get(&self, hash: &str) -> Result<Option<TicketRecord>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT hash, device, user, task, expires_at, used_at, created_at
                 FROM fieldsync_tickets WHERE hash = ?1",
                [hash],
                |r| {
                    Ok(TicketRecord {
                        hash: r.get(0)?,
                        device: r.get(1)?,
                        user: r.get(2)?,
                        task: r.get(3)?,
                        expires_at: time_at(r, 4, "expires_at")?,
                        used_at: opt_time_at(r, 5, "used_at")?,
                        created_at: time_at(r, 6, "created_at")?,
                    })
                },
            )
            .optional()?)
    }
}
