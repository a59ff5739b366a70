//! Login throttling: failed logins are counted per user and per device in the main
//! database, so several servers share the counts. After [`user_limit`] failures of a
//! user (or five times that on one device) within [`WINDOW_MS`], attempts are
//! refused with `429 throttled` and `Retry-After`, without checking the password, for
//! a wait that doubles with each further failure, up to 30 times the first. A
//! success resets the user's count; the device's count only ages out.
//!
//! Why the device and not the client's address: a login needs a paired device's id
//! and secret (`auth::device`), so only a device, or someone holding its secret, can
//! guess passwords at all, and the device count stops one that tries many users. An
//! address stands for a whole fleet behind the office's NAT or a carrier's: counting
//! by address let one crew's mistakes (or a stolen tablet's guesses) refuse every
//! other crew's right password. A fleet's successful logins are never throttled by
//! another device's or another user's failures.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use fieldsync_proto::wire::ErrorCode;
use fieldsync_store::{Store, Throttle};

use crate::error::ApiError;

/// Failures of one user within the window before its attempts are refused:
/// `FIELDSYNC_LOGIN_LIMIT` (for tests), else 5. A device may fail five times that.
pub fn user_limit() -> i64 {
    static LIMIT: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        std::env::var("FIELDSYNC_LOGIN_LIMIT")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(5)
    });
    *LIMIT
}
/// How long failures are remembered after the first of a run.
pub const WINDOW_MS: i64 = 15 * 60 * 1000;

/// The first wait: `FIELDSYNC_LOGIN_WAIT_MS` (for tests), else 30 s.
fn first_wait_ms() -> i64 {
    static WAIT: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        std::env::var("FIELDSYNC_LOGIN_WAIT_MS")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|&ms| ms > 0)
            .unwrap_or(30_000)
    });
    *WAIT
}

/// The counts a login attempt touches.
pub struct Keys {
    user: String,
    device: String,
}

impl Keys {
    pub fn new(user: &str, device: &str) -> Keys {
        Keys {
            user: format!("user:{user}"),
            device: format!("device:{device}"),
        }
    }

    fn all(&self) -> impl Iterator<Item = (&str, i64)> {
        [
            (self.user.as_str(), user_limit()),
            (self.device.as_str(), 5 * user_limit()),
        ]
        .into_iter()
    }
}

/// The wait (ms) before an attempt may be checked, if any count refuses it now.
pub fn refused(store: &dyn Store, keys: &Keys, now_ms: i64) -> Result<Option<i64>, ApiError> {
    let mut wait = None;
    for (key, _) in keys.all() {
        if let Some(t) = store.throttle_get(key)?
            && t.until_ms > now_ms
        {
            wait = wait.max(Some(t.until_ms - now_ms));
        }
    }
    Ok(wait)
}

/// The count after one more failure at `now_ms`.
pub fn after_failure(
    old: Option<Throttle>,
    limit: i64,
    first_wait_ms: i64,
    now_ms: i64,
) -> Throttle {
    let mut t = match old {
        Some(t) if now_ms - t.since_ms <= WINDOW_MS => t,
        _ => Throttle {
            failures: 0,
            since_ms: now_ms,
            until_ms: 0,
        },
    };
    t.failures += 1;
    if t.failures >= limit {
        let doublings = (t.failures - limit).min(5) as u32;
        t.until_ms = now_ms + (first_wait_ms << doublings).min(30 * first_wait_ms);
    }
    t
}

/// Counts a failed login against the user and the device.
pub fn failed(store: &dyn Store, keys: &Keys, now_ms: i64) -> Result<(), ApiError> {
    for (key, limit) in keys.all() {
        let t = after_failure(store.throttle_get(key)?, limit, first_wait_ms(), now_ms);
        store.throttle_put(key, &t)?;
    }
    Ok(())
}

/// A successful login: the user's count starts again.
pub fn succeeded(store: &dyn Store, keys: &Keys) -> Result<(), ApiError> {
    Ok(store.throttle_clear(&keys.user)?)
}

/// `429 throttled` with `Retry-After` (whole seconds, rounded up).
pub fn refusal(wait_ms: i64) -> Response {
    let secs = (wait_ms + 999) / 1000;
    let err = ApiError::new(
        ErrorCode::Throttled,
        format!("too many attempts, try again in {secs} s"),
    );
    let mut response = err.into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_starts_at_the_limit_doubles_and_is_bounded() {
        let mut t = None;
        let mut waits = Vec::new();
        for i in 0..12 {
            let now = 1_000 + i;
            let next = after_failure(t, 5, 100, now);
            waits.push((next.until_ms - now).max(0));
            t = Some(next);
        }
        assert_eq!(
            waits,
            [0, 0, 0, 0, 100, 200, 400, 800, 1600, 3000, 3000, 3000]
        );
        // Past the window, the count starts again.
        let fresh = after_failure(t, 5, 100, 1_000 + WINDOW_MS + 100);
        assert_eq!((fresh.failures, fresh.until_ms), (1, 0));
    }
}
