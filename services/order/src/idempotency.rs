//! The `Idempotency-Key` of order's writes, `POST /buy` and `POST /orders/{id}/cancel`:
//! one path for both.
//!
//! # Why
//! A client that timed out does not know whether its write happened; it sends it again.
//! Without a key that is a second order, or a second cancel answered 409 although the
//! first one worked. With a key the write stores the key and a fingerprint of its request
//! in the row it creates (the order; the cancellation), under a unique index and in the
//! same transaction as its effect. A retry with the same key finds the row (a concurrent
//! one waits on the index until the first commits, then finds it) and gets the first
//! answer again, marked `idempotent-replayed: true`; the same key with another request is
//! refused with 422 `idempotency_key_reused`. A refused write stores nothing, so its retry
//! is decided again.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode},
    response::Response,
};
use common::http::ApiError;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The longest key accepted.
pub const MAX_KEY: usize = 255;

/// The header, as the document shows it on each write that takes it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyHeaders {
    /// 1 to 255 visible ASCII characters (inner spaces allowed); a retry with the same key
    /// and request gets the first answer again.
    #[param(rename = "Idempotency-Key", schema_with = key_schema)]
    idempotency_key: Option<String>,
}

fn key_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_KEY))
        .pattern(Some(r"^[!-~]([ -~]*[!-~])?$"))
        .build()
}

/// The request's key, if it sent one; 400 `invalid_idempotency_key` when it is not one.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // Visible ASCII and inner spaces only (the HTTP stack already dropped the outer ones).
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY && k.bytes().all(|b| (b' '..=b'~').contains(&b))
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_string()))
}

/// Fingerprint of a request (its fields, as JSON), to tell a retry from another request
/// reusing a key.
pub fn fingerprint(request: &impl Serialize) -> String {
    let fields = serde_json::to_vec(request).expect("a request's fields always serialize");
    let digest = Sha256::digest(fields);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `Ok` when the request stored under a key (its fingerprint) is this one: its answer is
/// replayed. Otherwise 422 `idempotency_key_reused`.
pub fn same_request(stored: Option<&str>, fingerprint: &str) -> Result<(), ApiError> {
    if stored == Some(fingerprint) {
        return Ok(());
    }
    Err(ApiError::BadRequest {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "idempotency_key_reused",
        message: "this Idempotency-Key was already used with a different request".into(),
    })
}

/// Marks an answer as the replay of an earlier request's.
pub fn mark_replayed(response: &mut Response) {
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
}
