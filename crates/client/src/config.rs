//! What an app chooses about the network, passed in as a value: the library reads no
//! environment (the CLI builds this from its `FIELDSYNC_*` variables).

use std::time::Duration;

/// Network limits of a [`crate::Device`]'s calls to the server. The timeouts are the
/// default transport's ([`crate::transport::UreqTransport`]); an app's own
/// [`crate::Transport`] keeps its own, and the retries and backoff apply to either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Longest wait to connect, default 10 s.
    pub connect_timeout: Duration,
    /// Longest silence while reading or writing, default 60 s.
    pub read_timeout: Duration,
    /// Attempts in all for a transient failure, default 3 (at least 1).
    pub attempts: u32,
    /// How long a device goes on asking a busy server again (HTTP 503: at capacity, or
    /// its main database locked; it says when to come back) before busy answers count
    /// against `attempts`, default 2 min: a fleet docking at once waits its turn
    /// instead of failing. A cancel cuts the wait short.
    pub busy_patience: Duration,
    /// The wait before the first retry, default 500 ms, doubling after each attempt.
    pub backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            attempts: 3,
            busy_patience: Duration::from_secs(120),
            backoff: Duration::from_millis(500),
        }
    }
}
