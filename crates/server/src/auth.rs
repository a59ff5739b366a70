//! Credentials: argon2id password hashes, random device secrets and session tokens
//! (stored only as SHA-256 hashes), and the checks every request goes through.

use axum::http::HeaderMap;
use fieldsync_proto::password;
use fieldsync_proto::wire::{
    ErrorCode, HEADER_DEVICE_ID, HEADER_DEVICE_SECRET, HEADER_PROTOCOL, PROTOCOL_VERSION,
};
use fieldsync_store::{DeviceRecord, SessionRecord, Store, UserRecord, sha256_hex};

use crate::audit::{Note, Refusal};
use crate::error::ApiError;
use crate::workers::{self, Workers};

/// How long a login session lasts without a new login.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// Logins (and ticket redeems) handled at once (twice the cores: one checks a
/// password while another reads the database).
pub(crate) static LOGINS: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(2 * std::thread::available_parallelism().map_or(2, |n| n.get()))
    });

/// Argon2 runs on a few threads of its own, one per core: each computation takes
/// about 19 MiB, so logins beyond the cores wait their turn instead of growing the
/// server's memory with the crowd (a semaphore alone is not enough: every blocking
/// thread's allocator arena would keep its own 19 MiB).
static HASHERS: std::sync::LazyLock<Workers> =
    std::sync::LazyLock::new(|| Workers::start("fieldsync-argon2", workers::per_core()));

/// Runs `f` on one of the [`HASHERS`] and waits for its result.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    HASHERS
        .submit(Box::new(move || {
            let _ = tx.send(f());
        }))
        .expect("the hashing threads run");
    rx.recv().expect("a hashing thread answers")
}

/// An argon2id hash in PHC string form.
pub fn hash_password(password: &str) -> String {
    let password = password.to_string();
    bounded(move || hash_password_now(&password))
}

fn hash_password_now(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS random source works");
    password::hash(password, &salt)
}

/// A hash of no user's password, made once with the same parameters as every user's:
/// what a login for an unknown user is checked against.
pub fn no_such_user_hash() -> &'static str {
    static HASH: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hash_password_now(&fieldsync_store::random_hex(16)));
    &HASH
}

/// Checks `password` against a PHC string on a hashing thread, in argon2 memory given
/// back to the system when the check ends (`password::returned_blocks`): a server that
/// checked a login holds none of it afterwards, whichever thread checked.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_string(), hash.to_string());
    bounded(move || password::verify(&password, &hash))
}

/// Constant-time equality of two hex hashes.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Refuses requests of another protocol major version.
pub fn check_protocol(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(v) = header(headers, HEADER_PROTOCOL) else {
        return Err(ApiError::bad_request(format!(
            "missing header {HEADER_PROTOCOL}"
        )));
    };
    match v.parse::<u32>() {
        Ok(PROTOCOL_VERSION) => Ok(()),
        Ok(other) => Err(ApiError::new(
            ErrorCode::UpdateRequired,
            format!(
                "protocol {other} is not served here (server speaks {PROTOCOL_VERSION}); update fieldsync on this device"
            ),
        )),
        Err(_) => Err(ApiError::bad_request(format!(
            "bad header {HEADER_PROTOCOL}"
        ))),
    }
}

/// The paired device making the request. Every refusal carries a note for the audit
/// log (`audit.rs`); those that read alike differ only in the note's detail.
pub fn device(store: &dyn Store, headers: &HeaderMap) -> Result<DeviceRecord, ApiError> {
    let refused = |subject: &str, detail: &str| {
        ApiError::unauthorized("unknown device or bad device secret").audited(Note::new(
            Refusal::DeviceRefused,
            "-",
            subject,
            detail,
        ))
    };
    let (Some(id), Some(secret)) = (
        header(headers, HEADER_DEVICE_ID),
        header(headers, HEADER_DEVICE_SECRET),
    ) else {
        let claimed = header(headers, HEADER_DEVICE_ID).unwrap_or("-");
        return Err(ApiError::unauthorized(
            "this device is not paired (missing device credentials)",
        )
        .audited(Note::new(
            Refusal::DeviceRefused,
            "-",
            claimed,
            "no device credentials",
        )));
    };
    // The secret first: an unknown device, a bad secret and a revoked device's id with
    // a bad secret get the same answer, so that ids cannot be probed.
    let device = store
        .device_get(id)?
        .ok_or_else(|| refused(id, "unknown device"))?;
    match &device.secret_hash {
        Some(h) if same(h, &sha256_hex(secret)) => {}
        Some(_) if device.revoked => {
            return Err(refused(id, "wrong device secret (a revoked device)"));
        }
        Some(_) => return Err(refused(id, "wrong device secret")),
        None => return Err(refused(id, "device not paired yet")),
    }
    if device.revoked {
        return Err(ApiError {
            keep_changes: device.keep_changes,
            ..ApiError::new(ErrorCode::Revoked, format!("device `{id}` was revoked"))
        }
        .audited(Note::new(Refusal::DeviceRevoked, id, id, "revoked device")));
    }
    Ok(device)
}

/// The logged-in session of the request, checked against its device and user.
pub fn session(
    store: &dyn Store,
    headers: &HeaderMap,
) -> Result<(DeviceRecord, SessionRecord, UserRecord), ApiError> {
    let device = device(store, headers)?;
    let refused = |message: &str, subject: &str, detail: &str| {
        ApiError::unauthorized(message).audited(Note::new(
            Refusal::SessionRefused,
            &device.id,
            subject,
            detail,
        ))
    };
    let token = header(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| refused("not logged in on this device", "-", "no session token"))?;
    const EXPIRED: &str = "not logged in (the session expired or was logged out); log in again";
    let session = store
        .session_get(&sha256_hex(token))?
        .ok_or_else(|| refused(EXPIRED, "-", "unknown or expired session token"))?;
    // Expiry is the store's to judge, by the database's clock (`session_get`).
    if session.device != device.id {
        return Err(refused(
            EXPIRED,
            &session.user,
            "a session token of another device",
        ));
    }
    let user = store
        .user_get(&session.user)?
        .ok_or_else(|| refused(EXPIRED, &session.user, "the session's user is gone"))?;
    if user.disabled {
        return Err(ApiError::unauthorized(format!(
            "user `{}` is disabled by the office; ask the office to enable it (changes not \
             yet sent stay on this device)",
            user.name
        ))
        .audited(Note::new(
            Refusal::UserDisabled,
            &device.id,
            &user.name,
            "a request of the user's session",
        )));
    }
    Ok((device, session, user))
}
