//! `POST /buy`, `POST /orders/{id}/cancel`, `GET /orders/{id}` and `GET /orders` (the
//! newest, for the dashboard).
//!
//! The order row and its `OrderCreated` message are written in ONE transaction. That is the
//! whole point of the local message table: there is no moment at which the order exists and
//! its message does not (or the reverse). The broker is not touched here, so an order can
//! be taken while RabbitMQ is down; the relay delivers the message when it is back.
//!
//! A cancel is the same again: the order's new state (`crate::transition`, guarded in SQL),
//! the cancellation row (its `Idempotency-Key`) and the `OrderCancelled` message, in one
//! transaction. Pay answers it with a refund or with "nothing was charged", and that answer
//! finishes the order (`crate::payment_results`).

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use common::http::{ApiError, Json, Path, Query, limit_param, text_field};
use message_table::outbox::{self, NewMessage};
use messages::{ORDER_CANCELLED, ORDER_CREATED, OrderCancelled, OrderCreated};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use uuid::Uuid;

use crate::{
    idempotency::{self, IdempotencyHeaders},
    startup::AppState,
    status::{OrderEvent, OrderStatus},
    transition::{self, Applied, TransitionError},
};

/// Limits that keep garbage out of the database.
const MAX_USER_ID: usize = 64;
const MAX_ITEM: usize = 200;
const MAX_AMOUNT_CENTS: i64 = 1_000_000_000_000; // ten billion in currency units

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
        idempotency::fingerprint(&(&self.user_id, &self.item, self.amount_cents))
    }
}

/// The place of each of an order's messages among them (the outbox publishes them, and
/// pay applies them, in this order). The order row is their version: its insert writes
/// the first, and the one move to a cancelled state that writes a cancellation (one per
/// order, `order_cancellations`' key) the second, both under that row's lock.
#[derive(Debug, Clone, Copy)]
enum MessageSeq {
    Created = 1,
    Cancelled = 2,
}

/// `POST /buy`: 201 with the order id, its message id and status. With an
/// `Idempotency-Key`, a retry of the same request returns the same order (and the header
/// `idempotent-replayed: true`); the same key with another body is refused with 422.
#[utoipa::path(post, path = "/buy", tag = "orders", request_body = BuyRequest,
    params(IdempotencyHeaders),
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
    let key = idempotency::key(&headers)?;
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
    )
    .in_sequence(MessageSeq::Created as i64);
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
    idempotency::same_request(hash.as_deref(), fingerprint)?;
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
        idempotency::mark_replayed(&mut response);
    }
    response
}

/// `POST /orders/{id}/cancel`: 202 with the order in its new state, `CANCELLED` (it was
/// waiting for its payment) or `CANCEL_REQUESTED` (it was paid: pay refunds it, then it is
/// `REFUNDED`). With an `Idempotency-Key`, a retry gets the first answer again (and the
/// header `idempotent-replayed: true`), with the order as it is now.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders",
    params(("id" = Uuid, Path, description = "the order id"), IdempotencyHeaders),
    responses(
        (status = 202, description = "cancellation accepted (or replayed): the order, whose status pay's answer finishes", body = Order,
            headers(("idempotent-replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "id is not a UUID, or a bad Idempotency-Key", body = common::openapi::ErrorBody),
        (status = 404, description = "no such order", body = common::openapi::ErrorBody),
        (status = 409, description = "`order_not_cancellable`: the order's status does not allow a cancel (nothing written)", body = common::openapi::ErrorBody),
        (status = 422, description = "Idempotency-Key already used for another request", body = common::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = common::openapi::ErrorBody)))]
pub async fn cancel_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let key = idempotency::key(&headers)?;
    let fingerprint = idempotency::fingerprint(&("cancel", id));
    if let Some(key) = &key
        && let Some(answer) = replay_cancel(&state, key, &fingerprint).await?
    {
        return Ok(answer);
    }

    let mut tx = state.pool.begin().await?;
    let status = match transition::apply(&mut tx, id, OrderEvent::Cancel, None).await {
        Ok(Applied::Moved(status)) => status,
        Ok(Applied::Kept { status, .. })
        | Err(TransitionError::Refused {
            current: status, ..
        }) => {
            tx.rollback().await?;
            // A request with the same key may have cancelled it a moment ago: its answer.
            if let Some(key) = &key
                && let Some(answer) = replay_cancel(&state, key, &fingerprint).await?
            {
                return Ok(answer);
            }
            return Err(not_cancellable(id, status));
        }
        Err(TransitionError::NoOrder(_)) => {
            return Err(ApiError::NotFound(format!("order {id} not found")));
        }
        Err(TransitionError::Database(e)) => return Err(e.into()),
    };
    // Locked by the move: as it is now, for the message and the answer.
    let order = find(&mut *tx, id).await?;
    let message = NewMessage::new(
        id,
        ORDER_CANCELLED.name,
        ORDER_CANCELLED.routing_key,
        messages::to_json(&OrderCancelled {
            order_id: id,
            user_id: order.user_id.clone(),
            amount_cents: order.amount_cents,
        }),
    )
    .in_sequence(MessageSeq::Cancelled as i64);
    let trace = common::trace::outgoing(common::trace::from_http(&headers).as_ref());
    let message = message.with_header(common::trace::TRACEPARENT, trace.to_string());
    // One cancellation per order (the move above lets only one through); a key already
    // taken by another order's cancel, even one committing concurrently, inserts nothing.
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO order_cancellations (order_id, message_id, idempotency_key, request_hash)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING
         RETURNING order_id",
    )
    .bind(id)
    .bind(message.id)
    .bind(&key)
    .bind(key.as_ref().map(|_| &fingerprint))
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        tx.rollback().await?;
        if let Some(key) = &key
            && let Some(answer) = replay_cancel(&state, key, &fingerprint).await?
        {
            return Ok(answer);
        }
        return Err(ApiError::Internal(anyhow::anyhow!(
            "order {id} moved to {status} but its cancellation conflicts with nothing known"
        )));
    }
    let wake = outbox::enqueue_quiet(&mut tx, &message, state.message_ttl).await?;
    tx.commit().await?;
    wake.send(&state.pool).await;

    tracing::info!(order_id = %id, message_id = %message.id, %status, "order cancelled");
    Ok(accepted(order, false))
}

/// The answer to a cancel whose key is already taken, if it is: the order as it is now,
/// or 422 when the key was used for another order.
async fn replay_cancel(
    state: &AppState,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Response>, ApiError> {
    let stored: Option<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT order_id, request_hash FROM order_cancellations WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(&state.pool)
    .await?;
    let Some((order_id, hash)) = stored else {
        return Ok(None);
    };
    idempotency::same_request(hash.as_deref(), fingerprint)?;
    Ok(Some(accepted(find(&state.pool, order_id).await?, true)))
}

/// 409 `order_not_cancellable`, naming the order's status and the ones a cancel leaves.
fn not_cancellable(id: Uuid, status: OrderStatus) -> ApiError {
    let from: Vec<&str> = OrderEvent::Cancel
        .moves()
        .into_iter()
        .map(|(from, _)| from.as_str())
        .collect();
    ApiError::Conflict {
        code: "order_not_cancellable",
        message: format!(
            "order {id} is {status}; only an order that is {} can be cancelled",
            from.join(" or ")
        ),
    }
}

fn accepted(order: Order, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(order)).into_response();
    if replayed {
        idempotency::mark_replayed(&mut response);
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
pub(crate) async fn find(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> Result<Order, ApiError> {
    sqlx::query_as(
        "SELECT id, user_id, item, amount_cents, status, failure_reason, message_id, created_at, updated_at
         FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
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
        description = "The order service: takes orders (`POST /buy`), cancels them (`POST /orders/{id}/cancel`) and shows them. The operator routes under `/admin/*` need `Authorization: Bearer <ADMIN_TOKEN>` and answer 404 when `ADMIN_TOKEN` is unset. Every error is `{\"error\": {\"code\", \"message\"}}`; an unknown route is 404, a wrong method 405."
    ),
    paths(buy, cancel_order, get_order, list_orders),
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
