//! HTTP plumbing shared by every service: the one JSON error shape, health endpoints and the
//! shutdown signal.
//!
//! Every error a client sees is `{"error": {"code", "message"}}` with the status that names
//! the problem. Internal errors are logged with their whole cause chain and answered with a
//! generic message: a client never sees SQL or broker details.

use axum::{
    extract::{
        FromRequest, FromRequestParts,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::json;

/// `axum::Json` whose rejection is an [`ApiError`], so a bad body gets the project's error
/// shape and a handler can take `Json(body): Json<T>` directly. As a response it is
/// `axum::Json`.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejection is an [`ApiError`] (400 `invalid_path`).
#[derive(Debug, Clone, Copy, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` whose rejection is an [`ApiError`] (400 `invalid_query`).
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The one error type a handler returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or fails validation (400 or 422, chosen by the caller).
    #[error("{message}")]
    BadRequest {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// Credentials missing or wrong: 401 with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (for example an idempotency key reused
    /// with another body).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A dependency (database, broker, upstream) cannot be reached right now.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// Anything unexpected: logged with its cause chain, never shown to the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { status, .. } => *status,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Unavailable { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

/// What every free-text field accepts, as a JSON Schema pattern for the OpenAPI documents:
/// at least one character that is not white space, and no control character (`\0` cannot be
/// stored by PostgreSQL, and nobody means a control character in a name). [`text_field`]
/// checks the same.
pub const TEXT_PATTERN: &str =
    r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";

/// `value` trimmed, when it is at most `max` characters, not only white space, and free of
/// control characters; otherwise why not, naming `field` (the caller picks the status).
pub fn text_field(field: &str, value: &str, max: usize) -> Result<String, String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() || value.chars().count() > max {
        return Err(format!(
            "{field} must be 1 to {max} characters, not only white space"
        ));
    }
    Ok(trimmed.to_string())
}

/// A listing's `limit` query parameter, taken as text so a bad one is a 400
/// `invalid_limit` naming it: `default` when absent, else an integer from 1 to `max`.
pub fn limit_param(value: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    let Some(v) = value else { return Ok(default) };
    v.parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_limit",
                format!("limit must be an integer from 1 to {max}, not {v:?}"),
            )
        })
}

/// The project's error body, for callers that build a response without an `ApiError`
/// (the gateway answering for an upstream, a fallback route).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                "internal error".to_string()
            }
            ApiError::Unavailable { message, .. } => {
                tracing::warn!(%message, "dependency unavailable");
                message.clone()
            }
            other => other.to_string(),
        };
        let mut response = error_response(self.status(), self.code(), &message);
        if let ApiError::Unauthorized(_) = self {
            // RFC 6750 §3: a 401 names the scheme the client should use.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if is_connection_error(&err) {
            ApiError::Unavailable {
                code: "database_unavailable",
                message: "the database is unavailable or busy, try again later".into(),
            }
        } else {
            ApiError::Internal(anyhow::Error::new(err))
        }
    }
}

#[cfg(feature = "sqlx")]
/// True when the error says "cannot talk to the database" rather than "the query is wrong".
pub fn is_connection_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    ) || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| is_transient_sqlstate(&c)))
}

#[cfg(feature = "sqlx")]
/// SQLSTATEs that mean "try again later": connection exceptions (08), operator
/// intervention such as a shutdown or a terminated backend (57P), too many connections
/// (53300), serialization failure (40001) and deadlock (40P01).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || matches!(code, "53300" | "40001" | "40P01")
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            JsonRejection::BytesRejection(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
            _ => (StatusCode::BAD_REQUEST, "malformed_json"),
        };
        ApiError::BadRequest {
            status,
            code,
            message: rejection.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

/// Bodies up to this size are read and discarded before a 413 (see [`refuse_oversized_body`]).
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// How long reading a refused body may take.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Middleware: a request whose declared `Content-Length` is over `limit` gets 413 at once,
/// but only after its body was read and thrown away. Answering with the body unread closes
/// the connection with data still arriving, which resets it: a proxy still sending (the
/// gateway) then sees a broken pipe instead of the 413 and can only answer 502. Bodies above
/// [`DRAIN_LIMIT`], or slower than [`DRAIN_TIMEOUT`], are not waited for.
pub async fn refuse_oversized_body(
    axum::extract::State(limit): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&n| n > limit as u64) else {
        return next.run(request).await;
    };
    if declared <= DRAIN_LIMIT {
        use futures::StreamExt;
        let mut body = request.into_body().into_data_stream();
        let drain = async { while let Some(Ok(_)) = body.next().await {} };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    }
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the request body of {declared} bytes is over the limit of {limit} bytes"),
    )
}

/// 404 for every unknown route, in the project's error shape.
pub async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// 405 in the project's error shape (axum's default has an empty body).
pub async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Answer for `GET /readyz` from named checks: 200 when all pass, 503 otherwise, with each
/// check's result so an operator sees what is down, and which broker node each named
/// connection is on (`null` while it is down).
pub fn readiness(checks: &[(&str, bool)], broker_links: &[(String, Option<String>)]) -> Response {
    let ready = checks.iter().all(|(_, ok)| *ok);
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks.iter().map(|(name, ok)| (name.to_string(), json!(if *ok { "up" } else { "down" }))).collect::<serde_json::Map<_, _>>(),
        "broker_links": broker_links.iter().map(|(name, node)| (name.clone(), json!(node))).collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Resolves on SIGINT or SIGTERM: pass it to `axum::serve(..).with_graceful_shutdown`.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_field_is_trimmed_and_refuses_control_characters_and_length() {
        assert_eq!(text_field("f", " alice ", 7).unwrap(), "alice");
        assert_eq!(text_field("f", "名字", 2).unwrap(), "名字");
        for bad in [
            "",
            "   ",
            "\u{a0}",
            "a\0b",
            "a\tb",
            "\u{85}",
            "too long!",
            "  alice ",
        ] {
            let err = text_field("f", bad, 7).unwrap_err();
            assert!(err.starts_with("f must"), "{bad:?}: {err}");
        }
    }
}
