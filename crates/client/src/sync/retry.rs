//! Retrying transient failures (the network, a damaged stream, a server error) with a
//! doubling backoff that a cancel cuts short.

use super::*;

/// Whether a failure may pass if tried again (the network, a damaged stream, a server
/// error); refusals and bad input never do.
fn is_transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unreachable { .. }
            | ClientError::ServerBusy { .. }
            | ClientError::Stream(_)
            | ClientError::Server {
                code: ErrorCode::Internal | ErrorCode::Damaged | ErrorCode::Busy,
                ..
            }
    )
}

/// Runs `attempt` until it succeeds, fails for good, or the attempts run out
/// (`config.attempts`); transient failures wait a doubling backoff, which a cancel
/// cuts short, and show in the progress as phase `retry`. A busy server is asked again
/// when it said, without using up attempts, for `config.busy_patience` from its first
/// busy answer.
pub(super) fn with_retries<T>(
    net: &ClientConfig,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
    mut attempt: impl FnMut(&mut dyn FnMut(&Progress)) -> Result<T>,
) -> Result<T> {
    let mut backoff = net.backoff;
    let mut n = 1;
    let mut busy_since: Option<Instant> = None;
    loop {
        let e = match attempt(progress) {
            Err(e) if is_transient(&e) && !cancel.is_cancelled() => e,
            other => return other,
        };
        let patient = match &e {
            ClientError::ServerBusy { .. } => {
                busy_since.get_or_insert_with(Instant::now).elapsed() < net.busy_patience
            }
            _ => false,
        };
        if !patient {
            if n >= net.attempts.max(1) {
                return Err(e);
            }
            n += 1;
        }
        progress(&Progress {
            phase: Phase::Retry,
            done: u64::from(n),
            total: u64::from(net.attempts),
            unit: "attempts",
            bytes: None,
        });
        // A busy server says how long to wait; the backoff is the least.
        let wait = match &e {
            ClientError::ServerBusy { retry_after, .. } => backoff.max(*retry_after),
            _ => backoff,
        };
        cancel.sleep(wait)?;
        if !patient {
            backoff *= 2;
        }
    }
}
