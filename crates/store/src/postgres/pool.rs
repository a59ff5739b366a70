//! The connection pool (r2d2): at most `POOL_MAX` connections, each started with
//! `SESSION_OPTIONS`; a request waits up to `POOL_WAIT` for one, and a connection
//! found closed when it comes back is dropped, not reused.

use std::time::Duration;

use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use super::{PgStore, pg_message, redact};
use crate::{Result, StoreError};

/// The r2d2 pool, and the settings it connects with.
pub(super) struct Pool {
    r2d2: r2d2::Pool<PostgresConnectionManager<NoTls>>,
    config: postgres::Config,
}

/// A pooled connection, back in the pool when dropped.
pub(super) type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// The settings every pooled connection starts with, whatever the database's or the
/// role's defaults (`ALTER DATABASE … SET TimeZone`, initdb's OS zone): text a device
/// sends without a zone is UTC, dates are read year-month-day, and nothing the server
/// formats in SQL follows the office's locale. What travels is formatted explicitly
/// anyway (`types.rs`); these settings steer what PostgreSQL parses. Given last, so
/// they win over `options` in the URL. A backstop for what the server's idle timeout
/// already cuts: a session idle inside a transaction for 10 minutes (a download whose
/// client trickles a byte a minute, a bug) is ended by PostgreSQL, so nothing pins
/// VACUUM for longer; the pool drops the broken connection.
const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres \
    -c extra_float_digits=1 -c standard_conforming_strings=on \
    -c idle_in_transaction_session_timeout=600000";

/// Connections one store holds at most (each request holds one; PostgreSQL's own
/// limit is 100 by default, shared by every server and the office).
const POOL_MAX: u32 = 32;
/// How long a request waits for a connection before it fails as busy.
const POOL_WAIT: Duration = Duration::from_secs(30);

impl Pool {
    /// The pool of a database's connection settings (from its URL). It connects only
    /// when a request needs a connection and none is idle; connections are kept until
    /// broken.
    pub(super) fn new(mut config: postgres::Config) -> Pool {
        let options = match config.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_string(),
        };
        config.options(&options);
        config.connect_timeout(Duration::from_secs(10));
        let r2d2 = r2d2::Pool::builder()
            .max_size(POOL_MAX)
            .min_idle(Some(0))
            .idle_timeout(None)
            .max_lifetime(None)
            .connection_timeout(POOL_WAIT)
            // No round trip per request: a closed connection is dropped when it comes
            // back (`has_broken`), and a query on one that broke while idle fails as any
            // database error does.
            .test_on_check_out(false)
            // Errors reach the caller, with their cause.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(PostgresConnectionManager::new(config.clone(), NoTls));
        Pool { r2d2, config }
    }
}

impl PgStore {
    pub(super) fn connect(&self) -> Result<Conn> {
        // No connection made yet (a command's first call, a server's first request):
        // one is tried here first, so a database that is not there fails at once with
        // its cause, where the pool would retry for its whole wait.
        if self.pool.r2d2.state().connections == 0 {
            let client = self
                .pool
                .config
                .connect(NoTls)
                .map_err(|e| self.unreachable(&pg_message(&e)))?;
            drop(client);
        }
        self.pool.r2d2.get().map_err(|e| {
            if self.pool.r2d2.state().connections >= POOL_MAX {
                StoreError::Db(format!(
                    "main database busy: all {POOL_MAX} connections in use for {} s",
                    POOL_WAIT.as_secs()
                ))
            } else {
                self.unreachable(&e.to_string())
            }
        })
    }

    fn unreachable(&self, cause: &str) -> StoreError {
        StoreError::Db(format!("cannot connect to {}: {cause}", redact(&self.url)))
    }
}
