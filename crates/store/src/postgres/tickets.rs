//! Auto-sync tickets on PostgreSQL (`fieldsync.tickets`): issued at a login, renewed
//! by the pair's requests, redeemed once for an automatic session.

use fieldsync_proto::time::Timestamp;

use super::{PgStore, in_tx, opt_time_at, time_at};
use crate::{Redeemed, Result, SessionRecord, SessionScope, TicketRecord, Tickets};

impl Tickets for PgStore {
    fn ticket_issue(&self, t: &TicketRecord) -> Result<()> {
        let mut c = self.conn()?;
        let (created_at, expires_at) = (t.created_at.to_string(), t.expires_at.to_string());
        in_tx(&mut c, |tx| {
            tx.execute(
                "DELETE FROM fieldsync.tickets WHERE device = $1 AND user_name = $2
                 AND (used_at IS NULL OR expires_at < $3)",
                &[&t.device, &t.user, &created_at],
            )?;
            tx.execute(
                "INSERT INTO fieldsync.tickets (hash, device, user_name, task, expires_at, used_at, created_at)
                 VALUES ($1, $2, $3, NULL, $4, NULL, $5)",
                &[&t.hash, &t.device, &t.user, &expires_at, &created_at],
            )?;
            Ok(())
        })
    }

    fn ticket_renew(
        &self,
        device: &str,
        user: &str,
        ttl_ms: i64,
        task: Option<&str>,
    ) -> Result<()> {
        self.conn()?.execute(
            "UPDATE fieldsync.tickets
             SET expires_at = to_char((clock_timestamp() + $3::int8 * interval '1 millisecond')
                                      AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                 task = coalesce($4, task)
             WHERE device = $1 AND user_name = $2 AND used_at IS NULL",
            &[&device, &user, &ttl_ms, &task],
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
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let now = Timestamp::from_unix_ms(
                tx.query_one(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8",
                    &[],
                )?
                .get(0),
            );
            // The row lock makes a second redeem of the ticket wait, then find it used.
            let Some(row) = tx.query_opt(
                "SELECT user_name, task, expires_at, used_at IS NOT NULL FROM fieldsync.tickets
                 WHERE hash = $1 AND device = $2 FOR UPDATE",
                &[&hash, &device],
            )?
            else {
                return Ok(Redeemed::Unknown);
            };
            let (user, task): (String, Option<String>) = (row.get(0), row.get(1));
            if row.get::<_, bool>(3) {
                return Ok(Redeemed::Unknown);
            }
            if time_at(&row, 2, "expires_at")? <= now {
                return Ok(Redeemed::Expired);
            }
            let enabled = tx
                .query_opt(
                    "SELECT NOT disabled FROM fieldsync.users WHERE name = $1",
                    &[&user],
                )?
                .is_some_and(|r| r.get::<_, bool>(0));
            if !enabled {
                return Ok(Redeemed::Disabled(user));
            }
            tx.execute(
                "UPDATE fieldsync.tickets SET used_at = $2 WHERE hash = $1",
                &[&hash, &now.to_string()],
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
                "INSERT INTO fieldsync.sessions (token_hash, device, user_name, created_at, expires_at, scope, scope_task)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &session.token_hash,
                    &session.device,
                    &session.user,
                    &session.created_at.to_string(),
                    &session.expires_at.to_string(),
                    &scope,
                    &scope_task,
                ],
            )?;
            Ok(Redeemed::Session(session))
        })
    }

    fn ticket_get(&self, hash: &str) -> Result<Option<TicketRecord>> {
        self.conn()?
            .query_opt(
                "SELECT hash, device, user_name, task, expires_at, used_at, created_at
                 FROM fieldsync.tickets WHERE hash = $1",
                &[&hash],
            )?
            .map(|r| -> Result<TicketRecord> {
                Ok(TicketRecord {
                    hash: r.get(0),
                    device: r.get(1),
                    user: r.get(2),
                    task: r.get(3),
                    expires_at: time_at(&r, 4, "expires_at")?,
                    used_at: opt_time_at(&r, 5, "used_at")?,
                    created_at: time_at(&r, 6, "created_at")?,
                })
            })
            .transpose()
    }
}
