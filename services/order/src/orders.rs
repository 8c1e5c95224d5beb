//! `POST /buy`, `GET /orders/{id}` and `GET /orders` (the newest, for the dashboard).
//!
//! The order row and its `OrderCreated` message are written in ONE transaction. That is the
//! whole point of the local message table: there is no moment at which the order exists and
//! its message does not (or the reverse). The broker is not touched here, so an order can
//! be taken while RabbitMQ is down; the relay delivers the message when it is back.

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use common::http::{ApiError, Json, Path, Query, limit_param, text_field};
use message_table::outbox::{self, NewMessage};
use messages::{ORDER_CREATED, OrderCreated};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use uuid::Uuid;

use crate::{startup::AppState, status::OrderStatus};

/// Limits that keep garbage out of the database.
const MAX_USER_ID: usize = 64;
const MAX_ITEM: usize = 200;
const MAX_AMOUNT_CENTS: i64 = 1_000_000_000_000; // ten billion in currency units
const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuyRequest {
    /// The paying account (trimmed).
    #[schema(schema_with = user_id_schema)]
    pub user_id: String,
    /// What is bought (trimmed).
    #[schema(schema_with = item_schema)]
    pub item: String,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount_cents: i64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BuyResponse {
    pub order_id: Uuid,
    pub message_id: Uuid,
    pub status: OrderStatus,
}

#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct Order {
    #[serde(rename = "order_id")]
    pub id: Uuid,
    pub user_id: String,
    pub item: String,
    pub amount_cents: i64,
    pub status: OrderStatus,
    pub failure_reason: Option<String>,
    pub message_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn user_id_schema() -> utoipa::openapi::Object {
    common::openapi::text_schema(MAX_USER_ID)
}

fn item_schema() -> utoipa::openapi::Object {
    common::openapi::text_schema(MAX_ITEM)
}

impl BuyRequest {
    fn validate(mut self) -> Result<Self, ApiError> {
        self.user_id =
            text_field("user_id", &self.user_id, MAX_USER_ID).map_err(ApiError::validation)?;
        self.item = text_field("item", &self.item, MAX_ITEM).map_err(ApiError::validation)?;
        if !(1..=MAX_AMOUNT_CENTS).contains(&self.amount_cents) {
            return Err(ApiError::validation(format!(
                "amount_cents must be between 1 and {MAX_AMOUNT_CENTS}"
            )));
        }
        Ok(self)
    }

    /// Fingerprint of the request, to tell a retry from a different request reusing a key.
    fn fingerprint(&self) -> String {
        let fields = serde_json::to_vec(&(&self.user_id, &self.item, self.amount_cents))
            .expect("two strings and a number always serialize");
        let digest = Sha256::digest(fields);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `POST /buy`'s header, as the document shows it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct BuyHeaders {
    /// 1 to 255 visible ASCII characters (inner spaces allowed); a retry with the same key
    /// and body returns the same order.
    #[param(rename = "Idempotency-Key", schema_with = idempotency_key_schema)]
    idempotency_key: Option<String>,
}

fn idempotency_key_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_IDEMPOTENCY_KEY))
        .pattern(Some(r"^[!-~]([ -~]*[!-~])?$"))
        .build()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // Visible ASCII and inner spaces only (the HTTP stack already dropped the outer ones).
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| (b' '..=b'~').contains(&b))
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            )
        })?;
    Ok(Some(key.to_string()))
}

/// `POST /buy`: 201 with the order id, its message id and status. With an
/// `Idempotency-Key`, a retry of the same request returns the same order (and the header
/// `idempotent-replayed: true`); the same key with another body is refused with 422.
#[utoipa::path(post, path = "/buy", tag = "orders", request_body = BuyRequest,
    params(BuyHeaders),
    responses(
        (status = 201, description = "order taken (or replayed)", body = BuyResponse,
            headers(("location" = String, description = "/orders/{order_id}"),
                    ("idempotent-replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key")),
            links(("the_order" = (operation_id = "get_order",
                parameters(("id" = "$response.body#/order_id")),
                description = "The order just taken")))),
        (status = 400, description = "malformed JSON or bad Idempotency-Key", body = common::openapi::ErrorBody),
        (status = 413, description = "body too large", body = common::openapi::ErrorBody),
        (status = 415, description = "not application/json", body = common::openapi::ErrorBody),
        (status = 422, description = "validation failed, or Idempotency-Key reused with another body", body = common::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = common::openapi::ErrorBody)))]
pub async fn buy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<BuyRequest>,
) -> Result<Response, ApiError> {
    let req = body.validate()?;
    let key = idempotency_key(&headers)?;
    let fingerprint = req.fingerprint();

    let order_id = Uuid::now_v7();
    let message = NewMessage::new(
        order_id,
        ORDER_CREATED.name,
        ORDER_CREATED.routing_key,
        messages::to_json(&OrderCreated {
            order_id,
            user_id: req.user_id.clone(),
            item: req.item.clone(),
            amount_cents: req.amount_cents,
        }),
    );
    // The request's trace (the gateway's, or the one its span started) goes on to pay.
    let trace = common::trace::outgoing(common::trace::from_http(&headers).as_ref());
    let message = message.with_header(common::trace::TRACEPARENT, trace.to_string());

    let mut tx = state.pool.begin().await?;
    // A concurrent request with the same key waits here on the unique index until the
    // first commits, then sees the conflict.
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO orders (id, user_id, item, amount_cents, message_id, idempotency_key, request_hash, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING id",
    )
    .bind(order_id)
    .bind(&req.user_id)
    .bind(&req.item)
    .bind(req.amount_cents)
    .bind(message.id)
    .bind(&key)
    .bind(key.as_ref().map(|_| &fingerprint))
    .bind(OrderStatus::PendingPayment)
    .fetch_optional(&mut *tx)
    .await?;

    if inserted.is_none() {
        tx.rollback().await?;
        let key = key.expect("only an Idempotency-Key conflicts: a NULL key is never equal");
        return replay(&state, &key, &fingerprint).await;
    }
    // Woken after the commit, not by a NOTIFY inside it: notifying commits wait for each
    // other (see `outbox::enqueue_quiet`).
    let wake = outbox::enqueue_quiet(&mut tx, &message, state.message_ttl).await?;
    tx.commit().await?;
    wake.send(&state.pool).await;

    tracing::info!(%order_id, message_id = %message.id, user_id = %req.user_id, "order created");
    Ok(created(
        BuyResponse {
            order_id,
            message_id: message.id,
            status: OrderStatus::PendingPayment,
        },
        false,
    ))
}

/// The answer to a request whose idempotency key is already taken.
async fn replay(state: &AppState, key: &str, fingerprint: &str) -> Result<Response, ApiError> {
    let (order_id, message_id, status, hash): (Uuid, Uuid, OrderStatus, Option<String>) =
        sqlx::query_as(
            "SELECT id, message_id, status, request_hash FROM orders WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_one(&state.pool)
        .await?;
    if hash.as_deref() != Some(fingerprint) {
        return Err(ApiError::BadRequest {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "idempotency_key_reused",
            message: "this Idempotency-Key was already used with a different request body".into(),
        });
    }
    Ok(created(
        BuyResponse {
            order_id,
            message_id,
            status,
        },
        true,
    ))
}

fn created(body: BuyResponse, replayed: bool) -> Response {
    let location = format!("/orders/{}", body.order_id);
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `GET /orders/{id}`.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = Uuid, Path, description = "the order id")),
    responses(
        (status = 200, description = "the order", body = Order),
        (status = 400, description = "id is not a UUID", body = common::openapi::ErrorBody),
        (status = 404, description = "no such order", body = common::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = common::openapi::ErrorBody)))]
pub async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    find(&state.pool, id).await.map(Json)
}

/// Order `id`, or 404.
pub(crate) async fn find(pool: &sqlx::PgPool, id: Uuid) -> Result<Order, ApiError> {
    sqlx::query_as(
        "SELECT id, user_id, item, amount_cents, status, failure_reason, message_id, created_at, updated_at
         FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))
}

/// Orders `GET /orders` answers when `limit` is not given, and the most it may ask for.
const DEFAULT_LIST_LIMIT: i64 = 20;
const MAX_LIST_LIMIT: i64 = 100;

/// `GET /orders`' query, as text: a bad `limit` is a 400 naming it.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
}

/// `GET /orders`' query, as the document shows it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListQueryDoc {
    /// How many orders.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<i64>,
}

/// `GET /orders`' body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderList {
    /// Newest first.
    pub orders: Vec<Order>,
}

/// `GET /orders?limit=N`: the newest orders, newest first (what the dashboard shows).
#[utoipa::path(get, path = "/orders", tag = "orders",
    params(ListQueryDoc),
    responses(
        (status = 200, description = "the newest orders", body = OrderList),
        (status = 400, description = "limit is not 1 to 100", body = common::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = common::openapi::ErrorBody)))]
pub async fn list_orders(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<OrderList>, ApiError> {
    let limit = limit_param(query.limit.as_deref(), DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)?;
    let orders = sqlx::query_as(
        "SELECT id, user_id, item, amount_cents, status, failure_reason, message_id, created_at, updated_at
         FROM orders ORDER BY created_at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(OrderList { orders }))
}

/// The order service's OpenAPI document (served at `GET /openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "order",
        description = "The order service: takes orders (`POST /buy`) and shows them. The operator routes under `/admin/*` need `Authorization: Bearer <ADMIN_TOKEN>` and answer 404 when `ADMIN_TOKEN` is unset. Every error is `{\"error\": {\"code\", \"message\"}}`; an unknown route is 404, a wrong method 405."
    ),
    paths(buy, get_order, list_orders),
    components(schemas(BuyRequest, BuyResponse, Order, OrderList))
)]
pub struct ApiDoc;

/// Order's own document: [`ApiDoc`] and the reconciler's and the story's admin routes (the
/// service adds the rest, see `service_kit::service::ServiceSpec::openapi`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = <ApiDoc as utoipa::OpenApi>::openapi();
    doc.merge(<crate::reconciler::ReconcilerDoc as utoipa::OpenApi>::openapi());
    doc.merge(<crate::story::StoryDoc as utoipa::OpenApi>::openapi());
    doc
}
