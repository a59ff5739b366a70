//! The connection pool: at most `POOL_MAX` connections, each started with
//! `SESSION_OPTIONS`; a request waits up to `POOL_WAIT` for one.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use postgres::{Client, NoTls};

use super::{PgStore, pg_message, redact};
use crate::{Result, StoreError};

/// Connections kept for reuse; a broken one is dropped, not returned.
pub(super) struct Pool {
    pub(super) config: postgres::Config,
    /// Idle connections, and how many are out.
    pub(super) state: Mutex<PoolState>,
    pub(super) returned: Condvar,
}

#[derive(Default)]
pub(super) struct PoolState {
    idle: Vec<Client>,
    out: usize,
}

/// The settings every pooled connection starts with, whatever the database's or the
/// role's defaults (`ALTER DATABASE … SET TimeZone`, initdb's OS zone): text a device
/// sends without a zone is UTC, dates are read year-month-day, and nothing the server
/// formats in SQL follows the office's locale. What travels is formatted explicitly
/// anyway (`types.rs`); these settings steer what PostgreSQL parses. Given last, so
/// they win over `options` in the URL. A backstop for what the server's idle timeout
/// already cuts: a session idle inside a transaction for 10 minutes (a download whose
/// client trickles a byte a minute, a bug) is ended by PostgreSQL, so nothing pins
/// VACUUM for longer; the pool drops the broken connection.
pub(super) const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres \
    -c extra_float_digits=1 -c standard_conforming_strings=on \
    -c idle_in_transaction_session_timeout=600000";

/// Connections one store holds at most (each request holds one; PostgreSQL's own
/// limit is 100 by default, shared by every server and the office).
const POOL_MAX: usize = 32;
/// How long a request waits for a connection before it fails as busy.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// A pooled connection, back in the pool when dropped.
pub(super) struct Conn<'p> {
    pool: &'p Pool,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let client = self.client.take();
        if let Ok(mut state) = self.pool.state.lock() {
            state.out -= 1;
            if let Some(c) = client
                && !c.is_closed()
            {
                state.idle.push(c);
            }
        }
        self.pool.returned.notify_one();
    }
}

impl PgStore {
    pub(super) fn connect(&self) -> Result<Conn<'_>> {
        fn poisoned<T>(_: T) -> StoreError {
            StoreError::Db("connection pool poisoned".into())
        }
        let deadline = std::time::Instant::now() + POOL_WAIT;
        let mut state = self.pool.state.lock().map_err(poisoned)?;
        while state.idle.is_empty() && state.out >= POOL_MAX {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::Db(format!(
                    "main database busy: all {POOL_MAX} connections in use for {} s",
                    POOL_WAIT.as_secs()
                )));
            }
            state = self
                .pool
                .returned
                .wait_timeout(state, left)
                .map_err(poisoned)?
                .0;
        }
        let idle = state.idle.pop();
        state.out += 1;
        drop(state);
        // From here the slot is ours: a failed connect gives it back.
        let mut conn = Conn {
            pool: &self.pool,
            client: None,
        };
        let client = match idle {
            Some(c) => c,
            None => {
                let mut config = self.pool.config.clone();
                config.connect_timeout(Duration::from_secs(10));
                config.connect(NoTls).map_err(|e| {
                    StoreError::Db(format!(
                        "cannot connect to {}: {}",
                        redact(&self.url),
                        pg_message(&e)
                    ))
                })?
            }
        };
        conn.client = Some(client);
        Ok(conn)
    }
}
