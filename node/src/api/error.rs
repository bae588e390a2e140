//! The API's error type and the one place where errors become HTTP statuses. Clients get a stable
//! code and a message about *their* request; internal causes are logged, never sent.

use axum::Json;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::IntoResponse;
use axum::response::Response;
use dtm_cluster::ClusterError;
use serde_json::Value;
use serde_json::json;

use crate::limits::RETRY_AFTER_SECONDS;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<Value>,
    /// Seconds for `Retry-After` on 429 and 503 (the default when unset).
    pub retry_after_seconds: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Vec::new(), retry_after_seconds: None }
    }
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unknown_dataset(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "unknown_dataset", format!("dataset `{id}` is not defined"))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unprocessable(message: impl Into<String>, details: Vec<Value>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_records",
            message: message.into(),
            details,
            retry_after_seconds: None,
        }
    }
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4();
        tracing::error!(error_id = %id, error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("internal error (reference {id})"))
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the cluster cannot commit right now (no quorum); retry",
            ),
            e @ ClusterError::CutOff { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e} (partitioned away, or the cluster lost its quorum); send the request to another node"),
            ),
            ClusterError::Overloaded => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", "this node is at capacity; retry")
            }
            ClusterError::Rejected { code, message } => rejected(&code, message),
            ClusterError::BadRequest(m) => Self::bad_request(m),
            ClusterError::Stopped(m) => {
                tracing::warn!(cause = %m, "request during shutdown");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "this node is shutting down; retry on another node",
                )
            }
            other => Self::internal(other),
        }
    }
}

/// Maps a deterministic rejection from the state machine to a status.
pub fn rejected(code: &str, message: String) -> ApiError {
    match code {
        "conflict" => ApiError::conflict(message),
        "idempotency_conflict" => ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message),
        "not_found" => ApiError::not_found(message),
        "unknown_dataset" => ApiError::new(StatusCode::NOT_FOUND, "unknown_dataset", message),
        "unknown_source" => ApiError::new(StatusCode::UNAUTHORIZED, "unknown_source", message),
        "key_revoked" => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message),
        _ => ApiError::bad_request(message),
    }
}

/// The stable code of an error answer, kept on the response for the audit layer, so the trail
/// (and the performance reports made from it, A5.3) name the cause of a refusal.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "details": self.details}});
        let mut resp = (self.status, Json(body)).into_response();
        resp.extensions_mut().insert(ErrorCode(self.code));
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(self.retry_after_seconds.unwrap_or(RETRY_AFTER_SECONDS)));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
