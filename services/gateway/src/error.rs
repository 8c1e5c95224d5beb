//! The failures the gateway answers itself, in the project's one error shape
//! (`{"error": {"code", "message"}}`, `common::http::error_response`). Everything else a
//! client sees, including an upstream's own 4xx and 5xx, is the upstream's answer.

use common::{admin::Denied, http::ApiError};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route, or a path kept internal: the same answer, so it reveals nothing.
    #[error("no upstream serves this path")]
    NoRoute,
    /// `/admin/...` without the admin token (see [`common::admin`]).
    #[error("the admin API needs the header Authorization: Bearer <ADMIN_TOKEN>")]
    Unauthorized,
    #[error("cannot forward this path: {0}")]
    InvalidUri(String),
    #[error("the request body exceeds {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// No instance accepted a connection, or the connection failed before a response.
    #[error("the upstream service is unreachable or closed the connection")]
    BadGateway,
    #[error("the upstream service did not answer in time")]
    GatewayTimeout,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::Unauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::InvalidUri(_) => StatusCode::BAD_REQUEST,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadGateway => StatusCode::BAD_GATEWAY,
            GatewayError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::Unauthorized => "unauthorized",
            GatewayError::InvalidUri(_) => "invalid_uri",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::BadGateway => "bad_gateway",
            GatewayError::GatewayTimeout => "gateway_timeout",
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        if let GatewayError::Unauthorized = self {
            // The services' answer, `WWW-Authenticate: Bearer` included.
            return ApiError::from(Denied::Unauthorized).into_response();
        }
        common::http::error_response(self.status(), self.code(), &self.to_string())
    }
}
