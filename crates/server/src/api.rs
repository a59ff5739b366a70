//! The HTTP API: routes and handlers. Handlers check, then call the store from a
//! blocking thread; the store does the work.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fieldsync_proto::filter::Params;
use fieldsync_proto::task::check_name;
use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{
    ErrorCode, HEADER_KIND, HEADER_OP, JSON_BODY_MAX_BYTES, LoginRequest, LoginResponse,
    PROTOCOL_VERSION, PairRequest, PairResponse, SliceHeader, SyncOp, TaskSummary, Trigger,
    UPLOAD_BODY_MAX_BYTES,
};
use fieldsync_store::{AssignedTask, SessionRecord, SessionScope, Store, random_hex, sha256_hex};
use serde::de::DeserializeOwned;

use crate::audit::{Note, Refusal};
use crate::auth;
use crate::download;
use crate::download_turns::Downloads;
use crate::error::ApiError;
use crate::request_log::{self, Who};
use crate::{throttle, tickets, uploads};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    downloads: Arc<Downloads>,
    /// Rows of the slices streamed whole lately: the next header's estimate.
    estimates: Arc<crate::estimates::Estimates>,
    /// The rows of big slices streamed whole lately, kept to be sent again.
    kept: Arc<crate::kept::Kept>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) seen: Arc<crate::seen::Seen>,
    /// Writes refused authentications to the audit log (`audit.rs`).
    pub(crate) audit: Arc<crate::audit::Writer>,
    /// A ticket's time to live, in milliseconds (`Limits::ticket_ttl`).
    pub(crate) ticket_ttl_ms: i64,
    /// Where attached files' content is (`None`: this server serves no files).
    pub(crate) files: Option<Arc<dyn crate::files::FileStore>>,
    /// The console's sessions and settings (`console/`).
    pub(crate) console: Arc<crate::console::Console>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, limits: crate::Limits) -> AppState {
        AppState {
            audit: Arc::new(crate::audit::Writer::start(store.clone())),
            store,
            downloads: Arc::new(Downloads::new(&limits)),
            estimates: Arc::default(),
            kept: Arc::default(),
            ticket_ttl_ms: i64::try_from(limits.ticket_ttl.as_millis()).unwrap_or(i64::MAX),
            metrics: Arc::default(),
            seen: Arc::default(),
            files: None,
            console: Arc::new(crate::console::Console {
                sessions: Default::default(),
                stuck_after: limits.stuck_after,
                secure: false,
            }),
        }
    }

    /// Console cookies marked `Secure` (a server speaking TLS).
    pub fn with_secure_cookies(mut self, secure: bool) -> AppState {
        self.console = Arc::new(crate::console::Console {
            sessions: Default::default(),
            stuck_after: self.console.stuck_after,
            secure,
        });
        self
    }
}

const OPENAPI: &str = include_str!("openapi.json");

/// All routes; tests call it without a socket.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(
            "/api/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/api/v1/pair", post(pair))
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/tickets/redeem", post(tickets::redeem))
        .route("/api/v1/tasks", get(tasks))
        .route("/api/v1/tasks/{name}/download", get(download))
        .merge(crate::files::routes())
        .layer(DefaultBodyLimit::max(JSON_BODY_MAX_BYTES))
        .route(
            "/api/v1/uploads",
            post(uploads::upload).layer(DefaultBodyLimit::max(UPLOAD_BODY_MAX_BYTES)),
        )
        .layer(axum::middleware::from_fn(crate::upload_body::paced))
        // The console's HTML pages (its refusals are pages, which `json_errors` keeps).
        .merge(crate::console::routes())
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_log::log_request,
        ))
        .with_state(state)
}

/// Prometheus metrics of this server process (no device, user or task named).
async fn metrics(State(st): State<AppState>) -> Response {
    let active = st.downloads.streaming();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(active),
    )
        .into_response()
}

/// Store calls made at once from request handlers (not the streams of downloads,
/// which hold theirs for the whole stream, nor uploads, on their own threads).
pub(crate) const STORE_CALLS_AT_ONCE: usize = 8;

/// Turns for [`blocking`]: a crowd of requests waits here holding no thread, where
/// each call on its own blocking thread would open a database connection of its own
/// (a fleet docking at once opened some sixty at the same moment).
static STORE_CALLS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(STORE_CALLS_AT_ONCE);

/// Runs blocking store work off the async threads, at most [`STORE_CALLS_AT_ONCE`]
/// at a time.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking_in(&STORE_CALLS, f).await
}

/// Runs blocking store work off the async threads once `turns` gives it a turn (a
/// caller's own turns keep its calls from waiting behind the handlers', or theirs
/// behind its).
pub(crate) async fn blocking_in<T: Send + 'static>(
    turns: &tokio::sync::Semaphore,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _turn = turns.acquire().await.map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// A request body as the handlers take it, so that its rejection is ours to word.
pub(crate) type RequestBody = Result<Bytes, BytesRejection>;

/// The body's bytes; one over `limit` is refused as too large.
fn body_bytes(body: RequestBody, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body over {limit} bytes"),
            )
        } else {
            ApiError::bad_request(format!("unreadable request body: {e}"))
        }
    })
}

/// A JSON body; malformed JSON names the problem.
pub(crate) fn json_body<T: DeserializeOwned>(body: RequestBody) -> Result<T, ApiError> {
    let body = body_bytes(body, JSON_BODY_MAX_BYTES)?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))
}

async fn pair(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Json<PairResponse>, ApiError> {
    auth::check_protocol(&headers)?;
    let req: PairRequest = json_body(body)?;
    check_name("device", &req.device_id).map_err(ApiError::bad_request)?;
    blocking(move || {
        let secret = random_hex(32);
        let paired = st.store.device_pair(
            &req.device_id,
            &sha256_hex(req.code.trim()),
            &sha256_hex(&secret),
            Timestamp::now(),
        )?;
        if !paired {
            return Err(ApiError::unauthorized(format!(
                "device `{}`: the enrollment code is wrong or was already used",
                req.device_id
            ))
            .audited(Note::new(
                Refusal::PairRefused,
                "-",
                &req.device_id,
                "wrong or already used enrollment code",
            )));
        }
        Ok(Json(PairResponse {
            device_secret: secret,
        }))
    })
    .await
}

async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, ApiError> {
    auth::check_protocol(&headers)?;
    let req: LoginRequest = json_body(body)?;
    // A crowd of logins waits here, holding no thread: each one's database reads
    // and password check cost memory, and the password checks run one per core
    // anyway (`auth::verify_password`).
    let _turn = auth::LOGINS.acquire().await.map_err(ApiError::internal)?;
    blocking(move || {
        let device = auth::device(&*st.store, &headers)?;
        let keys = throttle::Keys::new(&req.user, &device.id);
        let now_ms = st.store.clock_ms()?;
        if let Some(wait_ms) = throttle::refused(&*st.store, &keys, now_ms)? {
            let mut refusal = throttle::refusal(wait_ms);
            refusal.extensions_mut().insert(Note::new(
                Refusal::LoginThrottled,
                &device.id,
                &req.user,
                format!(
                    "too many failed logins: refused for {} s",
                    (wait_ms + 999) / 1000
                ),
            ));
            return Ok(refusal);
        }
        // An unknown user costs what a wrong password costs: the password is checked
        // against a hash either way, so the answer's time tells no user name.
        let found = st.store.user_get(&req.user)?;
        let hash = found
            .as_ref()
            .map_or(auth::no_such_user_hash(), |u| u.password_hash.as_str());
        let matches = auth::verify_password(&req.password, hash);
        if matches {
            throttle::succeeded(&*st.store, &keys)?;
        } else {
            throttle::failed(&*st.store, &keys, now_ms)?;
        }
        // Recorded alike but for the detail, which only administrators read; the
        // password never.
        let wrong = |detail: &str| {
            ApiError::unauthorized("wrong user name or password").audited(Note::new(
                Refusal::LoginFailed,
                &device.id,
                &req.user,
                detail,
            ))
        };
        let user = match found {
            Some(user) if matches => user,
            Some(_) => return Err(wrong("wrong password")),
            None => return Err(wrong("unknown user")),
        };
        if user.disabled {
            return Err(
                ApiError::unauthorized(format!("user `{}` is disabled", user.name)).audited(
                    Note::new(
                        Refusal::UserDisabled,
                        &device.id,
                        &user.name,
                        "a login with the right password",
                    ),
                ),
            );
        }
        let token = random_hex(32);
        // The database's clock, as every server judges expiry by it.
        let now = Timestamp::from_unix_ms(st.store.clock_ms()?);
        let session = SessionRecord {
            token_hash: sha256_hex(&token),
            device: device.id,
            user: user.name.clone(),
            created_at: now,
            expires_at: now.plus_ms(auth::SESSION_TTL_MS),
            scope: SessionScope::User,
        };
        st.store.session_put(&session)?;
        let ticket = tickets::issue(&*st.store, &session, st.ticket_ttl_ms)?;
        let who = Who {
            device: session.device.clone(),
            user: user.name.clone(),
        };
        let answer = Json(LoginResponse {
            user: user.name,
            token,
            expires_at: session.expires_at,
            ticket: Some(ticket),
        });
        Ok(with_who(answer.into_response(), who))
    })
    .await
}

async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    auth::check_protocol(&headers)?;
    blocking(move || {
        let (_, session, _) = tickets::user_session(&st, &headers)?;
        st.store.session_delete(&session.token_hash)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Tasks assigned to both the user and the device (one indexed query: a request
/// costs the same with one task or ten thousand assigned to others).
fn assigned(store: &dyn Store, user: &str, device: &str) -> Result<Vec<AssignedTask>, ApiError> {
    Ok(store.tasks_assigned(user, device)?)
}

/// Task `name` when it is assigned to both the user and the device.
pub(crate) fn assigned_one(
    store: &dyn Store,
    name: &str,
    user: &str,
    device: &str,
) -> Result<Option<AssignedTask>, ApiError> {
    Ok(store.task_assigned(name, user, device)?)
}

async fn tasks(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    auth::check_protocol(&headers)?;
    blocking(move || {
        let (device, _, user) = tickets::user_session(&st, &headers)?;
        let list: Vec<TaskSummary> = assigned(&*st.store, &user.name, &device.id)?
            .into_iter()
            .map(|t| TaskSummary {
                name: t.def.name.clone(),
                description: t.def.description.clone(),
                tables: t.def.tables.iter().map(|x| x.name.clone()).collect(),
            })
            .collect();
        let who = Who {
            device: device.id,
            user: user.name,
        };
        Ok(with_who(Json(list).into_response(), who))
    })
    .await
}

async fn download(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth::check_protocol(&headers)?;
    check_name("task", &name).map_err(ApiError::bad_request)?;
    let (op, trigger) = op_and_trigger(&headers, SyncOp::Download)?;
    let (position, full) = download::requested(&headers)?;
    let keys_used = download::keys_used(&headers)?;
    let started = (std::time::Instant::now(), Timestamp::now());
    let state = st.clone();
    let (device, session, user, task, device_turn) = blocking(move || {
        let (device, session, user) = tickets::download_session(&state, &headers, &name)?;
        let device_turn = state.downloads.device_turn(&device.id)?;
        let task =
            assigned_one(&*state.store, &name, &user.name, &device.id)?.ok_or_else(|| {
                ApiError::forbidden(fieldsync_proto::wire::not_assigned(
                    &name, &user.name, &device.id,
                ))
            })?;
        Ok((device, session, user, task, device_turn))
    })
    .await?;
    let turn = st.downloads.turn(device_turn).await?;
    let state = st.clone();
    let (plan, header, turn, estimate_key, kept_key) = blocking(move || {
        let store = state.store.clone();
        tickets::downloading(&state, &session, &task.def.name);
        let params = Params {
            user: user.name.clone(),
            device: device.id.clone(),
        };
        let mut plan = fieldsync_store::plan_slice(&*store, &task.def, &params)?;
        let estimate_key = crate::estimates::Estimates::key(&plan);
        plan.rows_estimate = state
            .estimates
            .get(&estimate_key, std::time::Instant::now());
        let mut header = SliceHeader {
            protocol: PROTOCOL_VERSION,
            epoch: store.epoch()?,
            task: task.def.name.clone(),
            task_hash: task.hash.clone(),
            user: user.name,
            device: device.id,
            tables: plan.tables.iter().map(|t| t.schema.clone()).collect(),
            since: None,
            full_reason: None,
            assigned: task.users.clone(),
            key_blocks: Vec::new(),
            file_tables: task
                .def
                .files
                .as_ref()
                .map(|f| f.tables.clone())
                .unwrap_or_default(),
        };
        header.key_blocks = download::key_blocks(&*store, &header, &keys_used)?;
        header.full_reason = download::full_reason(position.as_ref(), full, &header);
        if header.full_reason.is_none() {
            plan.since = position.map(|p| p.cursor);
            header.since = plan.since;
        }
        let kept_key = crate::kept::Kept::key(&plan, &header);
        Ok((plan, header, turn, estimate_key, kept_key))
    })
    .await?;
    let session = download::SessionInfo {
        device: header.device.clone(),
        user: header.user.clone(),
        op,
        trigger,
        started: started.0,
        started_at: started.1,
    };
    let who = Who {
        device: header.device.clone(),
        user: header.user.clone(),
    };
    let body = download::start(
        st.store.clone(),
        st.metrics.clone(),
        download::Lately {
            estimates: (st.estimates.clone(), estimate_key),
            kept: (st.kept.clone(), kept_key),
        },
        plan,
        header,
        session,
        turn,
    )?;
    let response = (
        [(header::CONTENT_TYPE, "application/x-fieldsync-slice+zstd")],
        Body::new(body),
    )
        .into_response();
    Ok(with_who(response, who))
}

/// The operation a request belongs to and what started it, for the sync history.
pub(crate) fn op_and_trigger(
    headers: &HeaderMap,
    default_op: SyncOp,
) -> Result<(SyncOp, Trigger), ApiError> {
    let bad = || ApiError::bad_request(format!("bad {HEADER_OP} or {HEADER_KIND} header"));
    let get = |name: &str| headers.get(name).map(|v| v.to_str().ok());
    let op = match get(HEADER_OP) {
        None => default_op,
        Some(name) => name.and_then(SyncOp::parse).ok_or_else(bad)?,
    };
    let trigger = match get(HEADER_KIND) {
        None => Trigger::Manual,
        Some(name) => name.and_then(Trigger::parse).ok_or_else(bad)?,
    };
    Ok((op, trigger))
}

/// `response` with `who` for the request log.
pub(crate) fn with_who(mut response: Response, who: Who) -> Response {
    response.extensions_mut().insert(who);
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A crowd of store calls runs at most `STORE_CALLS_AT_ONCE` at a time, and every
    /// one of them runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_calls_take_turns() {
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let calls: Vec<_> = (0..3 * STORE_CALLS_AT_ONCE)
            .map(|i| {
                tokio::spawn(blocking(move || {
                    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                    MOST.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    RUNNING.fetch_sub(1, Ordering::SeqCst);
                    Ok(i)
                }))
            })
            .collect();
        let mut done = Vec::new();
        for call in calls {
            done.push(call.await.unwrap().unwrap());
        }
        assert_eq!(done, (0..3 * STORE_CALLS_AT_ONCE).collect::<Vec<_>>());
        assert_eq!(MOST.load(Ordering::SeqCst), STORE_CALLS_AT_ONCE);
    }
}
