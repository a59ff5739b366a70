//! The console's sessions: a random token in an HttpOnly, SameSite=Strict cookie,
//! kept in this server's memory as its SHA-256 with the administrator's name, the
//! session's CSRF token and its expiry. Memory, not the main database: a console
//! session is an office person's browser for a working day, a restart that logs them
//! out costs one login, and the devices' session table (whose rows name a device and
//! which the API's checks read) stays the devices' alone. With several servers behind
//! one address, the console needs a sticky route to one of them (docs/console.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fieldsync_store::{random_hex, sha256_hex};

/// How long a console session lasts after its login.
pub const TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at once; the oldest goes when a login would pass it.
const MAX_SESSIONS: usize = 1000;

/// The session cookie's name.
pub const COOKIE: &str = "fieldsync_console";
/// The login form's own CSRF cookie (before any session exists).
pub const LOGIN_COOKIE: &str = "fieldsync_console_login";

#[derive(Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `user`: its token (for the cookie) and its CSRF token.
    pub fn open(&self, user: &str) -> (String, String) {
        let token = random_hex(32);
        let csrf = random_hex(32);
        let mut map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            sha256_hex(&token),
            Session {
                user: user.to_string(),
                csrf: csrf.clone(),
                expires: now + TTL,
            },
        );
        (token, csrf)
    }

    /// The live session of a cookie's token.
    pub fn get(&self, token: &str) -> Option<Session> {
        let map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&sha256_hex(token))
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    pub fn close(&self, token: &str) {
        let mut map = self.by_hash.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&sha256_hex(token));
    }
}

/// A cookie's value in a request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, the console's path, `Secure`
/// when the server speaks TLS; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// Constant-time equality of two tokens.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_token_only_and_ends_when_closed() {
        let s = Sessions::default();
        let (token, csrf) = s.open("olga");
        assert_eq!(s.get(&token).map(|x| x.user), Some("olga".into()));
        assert_eq!(s.get(&token).map(|x| x.csrf), Some(csrf));
        assert!(s.get(&random_hex(32)).is_none());
        // Only the hash is kept.
        assert!(!s.by_hash.lock().unwrap().contains_key(&token));
        s.close(&token);
        assert!(s.get(&token).is_none());
    }

    #[test]
    fn cookies_are_read_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("cookie", "a=1; fieldsync_console=tok; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
