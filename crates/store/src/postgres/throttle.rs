//! Failed logins on PostgreSQL (`fieldsync.login_failures`).

use super::PgStore;
use crate::{Result, Throttle, Throttles};

impl Throttles for PgStore {
    fn throttle_get(&self, key: &str) -> Result<Option<Throttle>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT failures, since_ms, until_ms FROM fieldsync.login_failures WHERE key = $1",
                &[&key],
            )?
            .map(|r| Throttle {
                failures: r.get(0),
                since_ms: r.get(1),
                until_ms: r.get(2),
            }))
    }

    fn throttle_put(&self, key: &str, t: &Throttle) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO fieldsync.login_failures (key, failures, since_ms, until_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET failures = excluded.failures,
                 since_ms = excluded.since_ms, until_ms = excluded.until_ms",
            &[&key, &t.failures, &t.since_ms, &t.until_ms],
        )?;
        Ok(())
    }

    fn throttle_clear(&self, key: &str) -> Result<()> {
        self.conn()?.execute(
            "DELETE FROM fieldsync.login_failures WHERE key = $1",
            &[&key],
        )?;
        Ok(())
    }
}
