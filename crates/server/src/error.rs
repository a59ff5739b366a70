//! The one HTTP error type: each case maps to a status and a stable code; internal
//! details are logged on the server, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fieldsync_proto::wire::{ErrorBody, ErrorCode};
use fieldsync_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// With `Revoked`: the device backs up its unsent changes before it wipes.
    pub keep_changes: bool,
    /// A refused authentication to record in the audit log (`audit.rs`).
    pub audit: Option<Box<crate::audit::Note>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            keep_changes: false,
            audit: None,
        }
    }

    /// This error, recorded in the audit log as `note` when it is answered.
    pub fn audited(mut self, note: crate::audit::Note) -> Self {
        self.audit = Some(Box::new(note));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// "Busy" because of `what`, with the wait the answer's `Retry-After` gives.
    pub fn busy(what: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::Busy,
            format!(
                "busy: {what}; retry in {} s",
                fieldsync_proto::wire::BUSY_RETRY_AFTER_SECS
            ),
        )
    }

    /// Logs the detail and answers with a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        eprintln!("fieldsync server: internal error: {detail}");
        Self::new(
            ErrorCode::Internal,
            "internal server error (see the server log)",
        )
    }

    pub fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadRequest | ErrorCode::Damaged => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::Revoked => StatusCode::FORBIDDEN,
            ErrorCode::Throttled => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UpdateRequired => StatusCode::UPGRADE_REQUIRED,
            ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
            keep_changes: self.keep_changes,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => ApiError::bad_request(m),
            StoreError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            StoreError::AlreadyExists(m) => ApiError::bad_request(m),
            StoreError::Busy => ApiError::new(ErrorCode::Busy, StoreError::Busy.to_string()),
            // Retryable as busy: the device sends again.
            StoreError::Locked => ApiError::new(ErrorCode::Busy, StoreError::Locked.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Some(note) = self.audit {
            response.extensions_mut().insert(*note);
        }
        if self.code == ErrorCode::Busy {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(fieldsync_proto::wire::BUSY_RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// Gives every error answer the documented JSON body, whatever made it: the router's
/// own answers to an unknown path (404), another method (405, its `Allow` header kept)
/// and an extractor's refusal (a path that does not decode) carry plain text or
/// nothing. A `416` keeps its empty body: its `Content-Range` is the answer.
pub(crate) async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    let response = next.run(req).await;
    let status = response.status();
    // JSON is the API's own error body; an HTML page is the console's (`console/`).
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
        });
    if is_json
        || status == StatusCode::RANGE_NOT_SATISFIABLE
        || !(status.is_client_error() || status.is_server_error())
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Such answers are a line of text at most; a longer one is cut.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let what: String = what.chars().take(300).collect();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, format!("no such route: {what}")),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            format!("{what}: this route does not take that method (see `Allow`)"),
        ),
        StatusCode::UNAUTHORIZED => (ErrorCode::Unauthorized, text),
        StatusCode::FORBIDDEN => (ErrorCode::Forbidden, text),
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, text),
        s if s.is_server_error() => {
            return ApiError::internal(format!("{what}: {s} {text}")).into_response();
        }
        _ => (ErrorCode::BadRequest, text),
    };
    let message = if message.is_empty() {
        format!("{what}: {status}")
    } else {
        message
    };
    let mut answer = ApiError::new(code, message).into_response();
    *answer.status_mut() = status;
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        answer
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow.clone());
    }
    answer
}
