//! Read-only HTTP views: `GET /payments/{order_id}`, `GET /accounts/{user_id}`, and
//! `POST /payments/lookup`, what pay knows about a batch of orders (order's reconciler asks).

use std::collections::HashMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use common::http::{ApiError, Json, Path, text_field};
use messages::{LookupStatus, PaymentStatus};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use uuid::Uuid;

use crate::startup::AppState;

#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct Payment {
    #[serde(rename = "payment_id")]
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: String,
    pub amount_cents: i64,
    pub status: PaymentStatus,
    pub failure_reason: Option<String>,
    pub message_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// The credit back of a cancelled order's charge (one per order, enforced by its key).
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct Refund {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub user_id: String,
    pub amount_cents: i64,
    /// The `OrderCancelled` message that caused it.
    pub message_id: Uuid,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct Account {
    pub user_id: String,
    pub balance_cents: i64,
    pub updated_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/payments/{order_id}", tag = "payments",
    params(("order_id" = Uuid, Path, description = "the order the payment is for")),
    responses(
        (status = 200, description = "the payment", body = Payment),
        (status = 400, description = "order_id is not a UUID", body = common::openapi::ErrorBody),
        (status = 404, description = "no payment for this order", body = common::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = common::openapi::ErrorBody)))]
pub async fn get_payment(
    State(state): State<AppState>,
    Path(order_id): Path<Uuid>,
) -> Result<Json<Payment>, ApiError> {
    payment_of(&state.pool, order_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no payment for order {order_id}")))
}

/// The payment for `order_id`, if pay made one.
pub(crate) async fn payment_of(
    pool: &sqlx::PgPool,
    order_id: Uuid,
) -> sqlx::Result<Option<Payment>> {
    sqlx::query_as(
        "SELECT id, order_id, user_id, amount_cents, status, failure_reason, message_id, created_at
         FROM payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

/// The refund of `order_id`'s charge, if pay made one.
pub(crate) async fn refund_of(pool: &sqlx::PgPool, order_id: Uuid) -> sqlx::Result<Option<Refund>> {
    sqlx::query_as(
        "SELECT order_id, payment_id, user_id, amount_cents, message_id, created_at
         FROM refunds WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

/// The longest user id order accepts.
const MAX_USER_ID: usize = 64;

/// `GET /accounts/{user_id}`'s path, as the document shows it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct AccountPath {
    /// The account's user id (trimmed, as order stores it).
    #[param(schema_with = user_id_schema)]
    user_id: String,
}

fn user_id_schema() -> utoipa::openapi::Object {
    common::openapi::text_schema(MAX_USER_ID)
}

#[utoipa::path(get, path = "/accounts/{user_id}", tag = "accounts",
    params(AccountPath),
    responses(
        (status = 200, description = "the account", body = Account),
        (status = 400, description = "not a user id", body = common::openapi::ErrorBody),
        (status = 404, description = "no such account", body = common::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = common::openapi::ErrorBody)))]
pub async fn get_account(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    let user_id = text_field("user_id", &user_id, MAX_USER_ID)
        .map_err(|m| ApiError::bad_request("invalid_user_id", m))?;
    sqlx::query_as("SELECT user_id, balance_cents, updated_at FROM accounts WHERE user_id = $1")
        .bind(&user_id)
        .fetch_optional(&state.pool)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("account {user_id:?} not found")))
}

/// Most order ids one lookup may name (order's `RECONCILER_BATCH_SIZE` is bounded by it).
pub const MAX_LOOKUP: usize = 100;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    #[schema(min_items = 1, max_items = 100)]
    pub order_ids: Vec<Uuid>,
}

/// One order as pay knows it: its payment's status, or [`LookupStatus::Unknown`] (then the
/// other fields are absent).
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct PaymentLookup {
    pub order_id: Uuid,
    #[sqlx(try_from = "PaymentStatus")]
    pub status: LookupStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// `POST /payments/lookup`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LookupResponse {
    pub payments: Vec<PaymentLookup>,
}

/// `POST /payments/lookup` with `{"order_ids": [...]}` (1 to [`MAX_LOOKUP`]): each order's
/// payment, in the order asked, [`LookupStatus::Unknown`] for those pay never saw.
#[utoipa::path(post, path = "/payments/lookup", tag = "payments", request_body = LookupRequest,
    responses(
        (status = 200, description = "each order's payment, in the order asked", body = LookupResponse),
        (status = 400, description = "malformed JSON", body = common::openapi::ErrorBody),
        (status = 413, description = "body too large", body = common::openapi::ErrorBody),
        (status = 415, description = "not application/json", body = common::openapi::ErrorBody),
        (status = 422, description = "not 1 to 100 order ids, or a field of the wrong type", body = common::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = common::openapi::ErrorBody)))]
pub async fn lookup_payments(
    State(state): State<AppState>,
    Json(req): Json<LookupRequest>,
) -> Result<Json<LookupResponse>, ApiError> {
    if req.order_ids.is_empty() || req.order_ids.len() > MAX_LOOKUP {
        return Err(ApiError::validation(format!(
            "order_ids must name 1 to {MAX_LOOKUP} orders"
        )));
    }
    let found: Vec<PaymentLookup> = sqlx::query_as(
        "SELECT order_id, status, id AS payment_id, user_id, amount_cents, failure_reason
         FROM payments WHERE order_id = ANY($1)",
    )
    .bind(&req.order_ids)
    .fetch_all(&state.pool)
    .await?;
    let found: HashMap<Uuid, PaymentLookup> = found.into_iter().map(|p| (p.order_id, p)).collect();
    let payments: Vec<PaymentLookup> = req
        .order_ids
        .iter()
        .map(|id| {
            found.get(id).cloned().unwrap_or(PaymentLookup {
                order_id: *id,
                status: LookupStatus::Unknown,
                payment_id: None,
                user_id: None,
                amount_cents: None,
                failure_reason: None,
            })
        })
        .collect();
    Ok(Json(LookupResponse { payments }))
}

/// The pay service's OpenAPI document (served at `GET /openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "pay",
        description = "The pay service's read views. The operator routes under `/admin/*` need `Authorization: Bearer <ADMIN_TOKEN>` and answer 404 when `ADMIN_TOKEN` is unset. Every error is `{\"error\": {\"code\", \"message\"}}`; an unknown route is 404, a wrong method 405."
    ),
    paths(get_payment, get_account, lookup_payments),
    components(schemas(Payment, Account, LookupRequest, LookupResponse, PaymentLookup))
)]
pub struct ApiDoc;

/// Pay's own document: [`ApiDoc`] and the story's admin route (the service adds the rest,
/// see `service_kit::service::ServiceSpec::openapi`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = <ApiDoc as utoipa::OpenApi>::openapi();
    doc.merge(<crate::story::StoryDoc as utoipa::OpenApi>::openapi());
    doc
}
