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
