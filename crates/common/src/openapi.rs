//! What every service's OpenAPI document shares: the error shape, the standard endpoints
//! (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`) and the admin token's security
//! scheme. A service merges [`StandardDoc`] into its own `ApiDoc` and serves the result at
//! `GET /openapi.json`; the gateway merges the services' documents under its prefixes.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{
    IntoResponses, Modify, OpenApi, ToSchema,
    openapi::{
        ObjectBuilder, Type,
        schema::SchemaType,
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};

/// The name of the admin token's security scheme (`Authorization: Bearer <ADMIN_TOKEN>`).
pub const ADMIN_SECURITY: &str = "admin_token";

/// The schema of a free-text field of at most `max` characters, as
/// [`crate::http::text_field`] checks it (for `#[schema(schema_with = ...)]`, which needs a
/// function without arguments: wrap it in one).
pub fn text_schema(max: usize) -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(crate::http::TEXT_PATTERN))
        .build()
}

/// [`text_schema`] that may also be `null` (an optional field of a JSON body).
pub fn text_or_null_schema(max: usize) -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(crate::http::TEXT_PATTERN))
        .build()
}

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
    /// Each broker connection (`<service>/<role>`) and the node (`host:port`) it is on,
    /// `null` while it is down. Order and pay only: the gateway holds no broker connection.
    pub broker_links: Option<BTreeMap<String, Option<String>>>,
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

/// Prometheus metrics: the classic text format (0.0.4), or OpenMetrics 1.0 when the `Accept`
/// header asks for `application/openmetrics-text`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format (OpenMetrics on request)",
        content_type = crate::metrics::CONTENT_TYPE, body = String)))]
#[allow(dead_code)]
fn metrics() {}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json",
        body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}

/// The answers every `/admin` route may give besides its own (see [`crate::admin`]).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum AdminErrors {
    /// No `Authorization: Bearer` header, or another token (with `WWW-Authenticate: Bearer`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The admin API is off (`ADMIN_TOKEN` unset), or the row named does not exist.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The database cannot be reached.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The answers of a route with a JSON body when the body is not acceptable.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// The body is not JSON.
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// The body is over the size limit.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `Content-Type` is not `application/json`.
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// The JSON does not have the documented shape, or a value is out of range.
    #[response(status = 422)]
    Invalid(ErrorBody),
}

/// Adds the `admin_token` bearer scheme that the admin routes name in `security`.
pub struct AdminSecurity;

impl Modify for AdminSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_SECURITY,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The standard endpoints, the error schema and the admin security scheme, merged into
/// each service's document.
#[derive(OpenApi)]
#[openapi(
    paths(healthz, readyz, metrics, openapi_json),
    components(schemas(ErrorBody, ErrorDetail, Health, Readiness)),
    modifiers(&AdminSecurity)
)]
pub struct StandardDoc;

/// `base` (a service's own paths) with [`StandardDoc`] merged in.
pub fn with_standard(mut base: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    base.merge(StandardDoc::openapi());
    base
}

/// `doc` as the JSON served at `GET /openapi.json`, with two corrections of what utoipa 5.5
/// writes:
/// - a response link's fields are in snake case (`operation_id`), where OpenAPI says
///   `operationId`, `operationRef` and `requestBody`: renamed;
/// - a path parameter whose schema comes from `schema_with` has `required: false`, where
///   OpenAPI requires `true` for every path parameter: set (a validator rejects the document
///   otherwise).
pub fn to_json(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut json = serde_json::to_value(doc).expect("a utoipa document serializes");
    rename_link_fields(&mut json);
    require_path_parameters(&mut json);
    json
}

/// The operations of a document (and each path item's own parameter list, which has the
/// same shape for what is done here).
fn operations(json: &mut serde_json::Value) -> impl Iterator<Item = &mut serde_json::Value> {
    json["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut())
}

fn require_path_parameters(json: &mut serde_json::Value) {
    let parameters = operations(json)
        .filter_map(|op| match op {
            // A path item's `parameters` is the list itself.
            serde_json::Value::Array(list) => Some(list),
            op => op
                .get_mut("parameters")
                .and_then(serde_json::Value::as_array_mut),
        })
        .flatten()
        .filter_map(serde_json::Value::as_object_mut)
        .filter(|p| p.get("in").and_then(serde_json::Value::as_str) == Some("path"));
    for parameter in parameters {
        parameter.insert("required".into(), true.into());
    }
}

fn rename_link_fields(json: &mut serde_json::Value) {
    let links = operations(json)
        .filter_map(|op| {
            op.get_mut("responses")
                .and_then(serde_json::Value::as_object_mut)
        })
        .flat_map(|responses| responses.values_mut())
        .filter_map(|r| {
            r.get_mut("links")
                .and_then(serde_json::Value::as_object_mut)
        })
        .flat_map(|links| links.values_mut())
        .filter_map(serde_json::Value::as_object_mut);
    for link in links {
        for (from, to) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(from) {
                link.insert(to.into(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    /// A path parameter whose schema comes from `schema_with`, as pay's `/accounts/{user_id}`.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Path)]
    #[allow(dead_code)]
    struct NamePath {
        #[param(schema_with = name_schema)]
        name: String,
    }

    fn name_schema() -> utoipa::openapi::Object {
        super::text_schema(8)
    }

    #[utoipa::path(get, path = "/things/{name}", params(NamePath), responses((status = 200)))]
    #[allow(dead_code)]
    fn thing() {}

    #[derive(OpenApi)]
    #[openapi(paths(thing))]
    struct Doc;

    #[test]
    fn every_path_parameter_is_required_in_the_served_document() {
        let raw = serde_json::to_value(Doc::openapi()).unwrap();
        let parameter = &raw["paths"]["/things/{name}"]["get"]["parameters"][0];
        // What utoipa writes (the reason for the correction): no `required: true`.
        assert_ne!(parameter["required"], true, "{parameter}");
        let served = super::to_json(&Doc::openapi());
        let parameter = &served["paths"]["/things/{name}"]["get"]["parameters"][0];
        assert_eq!(parameter["in"], "path");
        assert_eq!(parameter["required"], true, "{parameter}");
    }
}
