//! What every service's OpenAPI document shares: the error shape and the standard endpoints
//! (`/healthz`, `/readyz`, `/metrics`). A service merges [`StandardDoc`] into its own
//! `ApiDoc` and serves the result at `GET /openapi.json`.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// The one error body: `{"error": {"code", "message"}}` (see [`crate::http::ApiError`]).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `not_found`, `validation_failed`, `malformed_json`, ...
    pub code: String,
    /// For a human; never SQL or broker details.
    pub message: String,
}

/// `GET /healthz`'s body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`'s body: each check `up` or `down`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    pub checks: BTreeMap<String, String>,
}

/// The process is alive and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", body = Health)))]
#[allow(dead_code)]
fn healthz() {}

/// Ready to serve: 200 when every check passes, 503 otherwise (with each check's result).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready", body = Readiness),
        (status = 503, description = "a dependency is down", body = Readiness)))]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
#[allow(dead_code)]
fn metrics() {}

/// The standard endpoints and the error schema, merged into each service's document.
#[derive(OpenApi)]
#[openapi(
    paths(healthz, readyz, metrics),
    components(schemas(ErrorBody, ErrorDetail, Health, Readiness))
)]
pub struct StandardDoc;

/// `base` (a service's own paths) with [`StandardDoc`] merged in.
pub fn with_standard(mut base: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    base.merge(StandardDoc::openapi());
    base
}
