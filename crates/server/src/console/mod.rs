//! The fleet console: server-rendered HTML pages under `/admin` for the office's
//! administrators (users with `admin`), beside the devices' API.
//!
//! Invariants, each enforced here:
//! - Every page and action but the login form needs a live session whose user is,
//!   on this request, an enabled administrator ([`Admin`]'s extractor reads the user
//!   record each time: disabling or demoting someone ends their console at once).
//! - Every state-changing request is a POST whose form carries the session's CSRF
//!   token ([`Admin::form`]); the login form carries its own, matched against a
//!   cookie set with the form. Cookies are HttpOnly and SameSite=Strict.
//! - A console login is throttled by the same counts as a device's (`throttle.rs`).
//! - Changes go through the functions the `fieldsync admin` commands call and are
//!   recorded in the audit log with the administrator's name as actor.

mod conflicts;
mod fleet;
mod html;
mod people;
mod session;
mod tasks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use fieldsync_store::{Store, StoreError};

use crate::api::AppState;
use crate::audit::{Note, Refusal};
use crate::{auth, throttle};

pub use session::Sessions;

/// The console's part of the server's state.
pub struct Console {
    pub sessions: Sessions,
    /// A device with no successful sync for this long is "stuck" (`--stuck-after`).
    pub stuck_after: Duration,
    /// Cookies carry `Secure` (the server speaks TLS).
    pub secure: bool,
}

/// The console's routes (HTML, not the API: not in `openapi.json`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(fleet::fleet))
        .route("/admin/console.css", get(css))
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/devices/{id}", get(fleet::device))
        .route("/admin/devices/{id}/revoke", post(people::device_revoke))
        .route("/admin/devices", post(people::device_add))
        .route("/admin/conflicts", get(conflicts::inbox))
        .route("/admin/conflicts/{id}/resolve", post(conflicts::resolve))
        .route("/admin/tasks", get(tasks::list))
        .route("/admin/tasks/{name}", get(tasks::show))
        .route("/admin/tasks/{name}/assign", post(tasks::assign))
        .route("/admin/tasks/{name}/unassign", post(tasks::unassign))
        .route("/admin/people", get(people::page))
        .route("/admin/users", post(people::user_add))
        .route("/admin/users/{name}/state", post(people::user_state))
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        html::CSS,
    )
        .into_response()
}

/// An HTML answer with the console's headers: no caching of pages holding CSRF
/// tokens, no framing, no script at all.
pub fn html_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    r
}

/// Why a console request was not carried out, as the person sees it.
pub enum Failure {
    /// No live administrator's session: to the login form.
    Login,
    /// A form without this session's CSRF token.
    Csrf,
    /// What the administrator asked is wrong or refused; the message says why.
    Refused(StatusCode, String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        let status = match &e {
            StoreError::Invalid(_) | StoreError::AlreadyExists(_) => StatusCode::BAD_REQUEST,
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Busy | StoreError::Locked => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure::Refused(status, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Failure::Login => return Redirect::to("/admin/login").into_response(),
            Failure::Csrf => (
                StatusCode::FORBIDDEN,
                "Refused: the form did not carry this session's CSRF token. Reload the page and try again."
                    .to_string(),
            ),
            Failure::Refused(status, text) => (status, text),
        };
        let body = format!(
            r#"{}<p><a href="/admin">Back to the console</a></p>"#,
            html::notice("error", &text)
        );
        html_response(status, html::page(None, "Not done", &body))
    }
}

pub type Page = Result<Response, Failure>;

/// Runs blocking store work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::Refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// The administrator a request comes from: a live session of an enabled admin user.
pub struct Admin {
    pub user: String,
    pub csrf: String,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Admin, Failure> {
        let token = session::cookie(&parts.headers, session::COOKIE).ok_or(Failure::Login)?;
        let s = st.console.sessions.get(token).ok_or(Failure::Login)?;
        let store = st.store.clone();
        let name = s.user.clone();
        let user = blocking(move || Ok(store.user_get(&name)?)).await?;
        match user {
            Some(u) if u.admin && !u.disabled => Ok(Admin {
                user: s.user,
                csrf: s.csrf,
            }),
            _ => {
                st.console.sessions.close(token);
                Err(Failure::Login)
            }
        }
    }
}

impl Admin {
    /// The page chrome for this administrator, on navigation entry `at`.
    pub fn chrome<'a>(&'a self, at: &'a str) -> html::Chrome<'a> {
        html::Chrome {
            user: &self.user,
            csrf: &self.csrf,
            at,
        }
    }

    /// A posted form, refused unless it carries this session's CSRF token.
    pub fn form(&self, form: &HashMap<String, String>) -> Result<(), Failure> {
        match form.get("csrf") {
            Some(t) if session::same(t, &self.csrf) => Ok(()),
            _ => Err(Failure::Csrf),
        }
    }

    /// Records a change this administrator made in the audit log (as `fieldsync
    /// admin` records the OS user's); the change is made, a failure only logged.
    pub fn audit(&self, store: &dyn Store, kind: &str, subject: &str, detail: &str) {
        if let Err(e) = crate::audit::admin_by(store, &self.user, kind, subject, detail) {
            tracing::warn!(error = %e, kind, subject, "console change not recorded in the audit log");
        }
    }
}

/// A field of a posted form, trimmed ("" when absent).
pub fn field<'f>(form: &'f HashMap<String, String>, name: &str) -> &'f str {
    form.get(name).map_or("", |v| v.trim())
}

async fn login_form(State(st): State<AppState>) -> Response {
    login_page(&st, StatusCode::OK, None)
}

/// The login form with a fresh CSRF token, also set as its cookie.
fn login_page(st: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let token = fieldsync_store::random_hex(32);
    let body = format!(
        r#"{}<form method="post" action="/admin/login" class="stack">{}
<div><label for="user">User name</label><input type="text" id="user" name="user" autocomplete="username" required autofocus></div>
<div><label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password" required></div>
<div><button type="submit">Log in</button></div></form>
<p class="muted">For administrators (<code>fieldsync admin user add NAME --admin</code>).</p>"#,
        error.map(|e| html::notice("error", e)).unwrap_or_default(),
        html::csrf_field(&token),
    );
    let mut r = html_response(status, html::page(None, "Log in", &body));
    let cookie = session::set_cookie(
        session::LOGIN_COOKIE,
        &token,
        Duration::from_secs(3600),
        st.console.secure,
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login(
    State(st): State<AppState>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let from_cookie = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    let sent = form.get("csrf").map_or("", String::as_str);
    if from_cookie.is_empty() || !session::same(from_cookie, sent) {
        return Failure::Csrf.into_response();
    }
    let user = field(&form, "user").to_string();
    let password = form.get("password").cloned().unwrap_or_default();
    // The throttle's "device" count is the browser's address here: the console has
    // no device, and one address guessing many users is what that count stops.
    let client = format!(
        "console@{}",
        connect.map_or("-".to_string(), |c| c.0.0.ip().to_string())
    );
    let Ok(_turn) = auth::LOGINS.acquire().await else {
        return Failure::Refused(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into())
            .into_response();
    };
    let state = st.clone();
    let checked = blocking(move || check_login(&*state.store, &user, &password, &client)).await;
    match checked {
        Ok(Ok(name)) => {
            let (token, _) = st.console.sessions.open(&name);
            let mut r = Redirect::to("/admin").into_response();
            for c in [
                session::set_cookie(session::COOKIE, &token, session::TTL, st.console.secure),
                session::set_cookie(session::LOGIN_COOKIE, "", Duration::ZERO, st.console.secure),
            ] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            r
        }
        Ok(Err((status, message, note))) => {
            let mut r = login_page(&st, status, Some(&message));
            if let Some(wait) = note.1 {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            }
            r.extensions_mut().insert(note.0);
            r
        }
        Err(f) => f.into_response(),
    }
}

/// A refused login: the status, the words shown, the audit note and a wait (s).
type LoginRefused = (StatusCode, String, (Note, Option<i64>));

/// Checks a console login as the API checks a device's (throttle first, a hash
/// checked for an unknown user too), then that the user is an enabled administrator.
fn check_login(
    store: &dyn Store,
    user: &str,
    password: &str,
    client: &str,
) -> Result<Result<String, LoginRefused>, Failure> {
    let keys = throttle::Keys::new(user, client);
    let now_ms = store.clock_ms()?;
    let api = |e: crate::error::ApiError| Failure::Refused(e.status(), e.body().message);
    if let Some(wait_ms) = throttle::refused(store, &keys, now_ms).map_err(api)? {
        let secs = (wait_ms + 999) / 1000;
        let note = Note::new(
            Refusal::LoginThrottled,
            client,
            user,
            format!("console: too many failed logins: refused for {secs} s"),
        );
        return Ok(Err((
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed logins: try again in {secs} s."),
            (note, Some(secs)),
        )));
    }
    let found = store.user_get(user)?;
    let hash = found
        .as_ref()
        .map_or(auth::no_such_user_hash(), |u| u.password_hash.as_str());
    let matches = auth::verify_password(password, hash);
    if matches {
        throttle::succeeded(store, &keys).map_err(api)?;
    } else {
        throttle::failed(store, &keys, now_ms).map_err(api)?;
    }
    let refuse = |kind, detail: &str, words: &str| {
        let status = if detail == "not an administrator" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        Ok(Err((
            status,
            words.to_string(),
            (
                Note::new(kind, client, user, format!("console: {detail}")),
                None,
            ),
        )))
    };
    let wrong = "Wrong user name or password.";
    match found {
        None => refuse(Refusal::LoginFailed, "unknown user", wrong),
        Some(_) if !matches => refuse(Refusal::LoginFailed, "wrong password", wrong),
        Some(u) if u.disabled => refuse(Refusal::UserDisabled, "disabled user", wrong),
        Some(u) if !u.admin => refuse(
            Refusal::LoginFailed,
            "not an administrator",
            "This user is not an administrator: the console is for administrators only.",
        ),
        Some(u) => Ok(Ok(u.name)),
    }
}

async fn logout(
    State(st): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    admin.form(&form)?;
    if let Some(token) = session::cookie(&headers, session::COOKIE) {
        st.console.sessions.close(token);
    }
    let mut r = Redirect::to("/admin/login").into_response();
    let gone = session::set_cookie(session::COOKIE, "", Duration::ZERO, st.console.secure);
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}
