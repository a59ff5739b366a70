//! Auto-sync tickets: issued at every login, renewed by the requests of the pair's
//! user sessions, redeemed (`POST /api/v1/tickets/redeem`) once for an automatic
//! session, whose scope is checked here: it may upload and download its ticket's last
//! task, nothing else.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use fieldsync_proto::wire::{RedeemRequest, RedeemResponse};
use fieldsync_store::{
    DeviceRecord, Redeemed, SessionRecord, SessionScope, Store, TicketRecord, UserRecord,
    random_hex, sha256_hex,
};

use crate::api::{AppState, RequestBody, blocking, json_body, with_who};
use crate::audit::{Note, Refusal};
use crate::auth;
use crate::error::ApiError;
use crate::request_log::Who;

/// How long an automatic session lasts: one synchronization's worth.
pub const AUTO_SESSION_TTL_MS: i64 = 3600 * 1000;

/// What an automatic session is refused outside its upload and download.
const AUTO_ONLY: &str =
    "an automatic synchronization's session may only send and download its last task";

/// A new ticket for the pair of a login's `session`, expiring `ttl_ms` after the
/// session's start (the database's clock); the pair's older unused tickets go.
/// Returns the secret, sent once.
pub(crate) fn issue(
    store: &dyn Store,
    session: &SessionRecord,
    ttl_ms: i64,
) -> Result<String, ApiError> {
    let secret = random_hex(32);
    store.ticket_issue(&TicketRecord {
        hash: sha256_hex(&secret),
        device: session.device.clone(),
        user: session.user.clone(),
        task: None,
        expires_at: session.created_at.plus_ms(ttl_ms),
        used_at: None,
        created_at: session.created_at,
    })?;
    Ok(secret)
}

/// Extends the unused ticket of a user session's pair to now plus the ticket's time
/// to live (recording `task` as its last task). Best effort: a renewal that fails
/// (a SQLite main database held by another program) is logged, and the request goes
/// on; the next one renews.
fn renew(st: &AppState, session: &SessionRecord, task: Option<&str>) {
    if session.scope != SessionScope::User {
        return;
    }
    if let Err(e) = st
        .store
        .ticket_renew(&session.device, &session.user, st.ticket_ttl_ms, task)
    {
        tracing::warn!(device = %session.device, user = %session.user, error = %e, "renewing a ticket");
    }
}

/// The session of a request only a user session may make (tasks list, logout);
/// renews the pair's ticket.
pub(crate) fn user_session(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<(DeviceRecord, SessionRecord, UserRecord), ApiError> {
    let (device, session, user) = auth::session(&*st.store, headers)?;
    if session.scope != SessionScope::User {
        return Err(ApiError::forbidden(AUTO_ONLY));
    }
    renew(st, &session, None);
    Ok((device, session, user))
}

/// The session of an upload, user or automatic; renews the pair's ticket.
pub(crate) fn upload_session(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<(DeviceRecord, SessionRecord, UserRecord), ApiError> {
    let (device, session, user) = auth::session(&*st.store, headers)?;
    renew(st, &session, None);
    Ok((device, session, user))
}

/// The session of a download of `task`: a user session, or an automatic one of that
/// task.
pub(crate) fn download_session(
    st: &AppState,
    headers: &HeaderMap,
    task: &str,
) -> Result<(DeviceRecord, SessionRecord, UserRecord), ApiError> {
    let (device, session, user) = auth::session(&*st.store, headers)?;
    match &session.scope {
        SessionScope::User => {}
        SessionScope::Auto { task: Some(t) } if t == task => {}
        SessionScope::Auto { task: Some(t) } => {
            return Err(ApiError::forbidden(format!(
                "an automatic synchronization may download only task `{t}`"
            )));
        }
        SessionScope::Auto { task: None } => {
            return Err(ApiError::forbidden(
                "an automatic synchronization may download no task: none was downloaded \
                 under its ticket",
            ));
        }
    }
    Ok((device, session, user))
}

/// A download of `task` was authorized: the pair's ticket is renewed and names it
/// as the last task.
pub(crate) fn downloading(st: &AppState, session: &SessionRecord, task: &str) {
    renew(st, session, Some(task));
}

/// `POST /api/v1/tickets/redeem`: the device's credentials and `{ticket}` → an
/// automatic session. Takes a turn among the logins, as a login would.
pub(crate) async fn redeem(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    auth::check_protocol(&headers)?;
    let req: RedeemRequest = json_body(body)?;
    let _turn = auth::LOGINS.acquire().await.map_err(ApiError::internal)?;
    blocking(move || {
        let device = auth::device(&*st.store, &headers)?;
        let token = random_hex(32);
        let redeemed = st.store.ticket_redeem(
            &sha256_hex(&req.ticket),
            &device.id,
            &sha256_hex(&token),
            AUTO_SESSION_TTL_MS,
        )?;
        let refused = |message: &str| {
            ApiError::unauthorized(message).audited(Note::new(
                Refusal::TicketRefused,
                &device.id,
                "-",
                message,
            ))
        };
        let session =
            match redeemed {
                Redeemed::Session(session) => session,
                Redeemed::Unknown => return Err(refused("unknown or already used ticket")),
                Redeemed::Expired => return Err(refused("expired ticket")),
                Redeemed::Disabled(user) => {
                    return Err(ApiError::unauthorized(format!("user `{user}` is disabled"))
                        .audited(Note::new(
                            Refusal::UserDisabled,
                            &device.id,
                            &user,
                            "a ticket redeemed",
                        )));
                }
            };
        let SessionScope::Auto { task } = session.scope else {
            return Err(ApiError::internal("a redeemed session is automatic"));
        };
        let who = Who {
            device: session.device,
            user: session.user.clone(),
        };
        let answer = RedeemResponse {
            user: session.user,
            token,
            expires_at: session.expires_at,
            task,
        };
        Ok(with_who(Json(answer).into_response(), who))
    })
    .await
}
