//! The failed-login counts the server's throttling keeps (`server/throttle.rs`).

use crate::Result;

/// Failed logins counted per key (`user:NAME`, `addr:IP`), in the main database so
/// that every server shares them (the rules are the server's, `server/throttle.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Failures since `since_ms`.
    pub failures: i64,
    /// When the count began (the database's clock, ms).
    pub since_ms: i64,
    /// Attempts are refused until then (ms; 0: not refused).
    pub until_ms: i64,
}

pub trait Throttles {
    fn throttle_get(&self, key: &str) -> Result<Option<Throttle>>;
    fn throttle_put(&self, key: &str, t: &Throttle) -> Result<()>;
    fn throttle_clear(&self, key: &str) -> Result<()>;
}
