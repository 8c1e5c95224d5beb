//! `GET /admin/payments/{order_id}/story`: pay's half of one order's story, for the
//! dashboard.
//!
//! Why: see order's `story` module. Pay shows its own rows about the order (the inbox
//! row of its `OrderCreated`, with the handler's attempts; the payment; the reply's outbox
//! row, with its publishes), and the page joins them to order's. An order pay never
//! saw is an empty story, not a 404: that is what the learner wants to see.

use axum::{Router, extract::State, routing::get};
use common::{
    http::{ApiError, Json, Path},
    openapi::AdminErrors,
};
use message_table::admin::{self, InboxRow, OutboxRow};
use messages::{
    ORDER_CANCELLED, ORDER_CREATED, PAYMENT_CANCELLED, PAYMENT_COMPLETED, PAYMENT_FAILED,
    PAYMENT_REFUNDED,
};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::accounts::{self, Payment, Refund};

/// The route, to be nested under `/admin` (behind the token).
pub fn admin_routes(pool: PgPool) -> Router {
    Router::new()
        .route("/payments/{order_id}/story", get(payment_story))
        .with_state(pool)
}

/// Pay's rows about one order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentStory {
    /// The `OrderCreated` message as pay's inbox received it (normally one row; a duplicate
    /// delivery has the same message id, so still one): `attempts` handler runs.
    pub order_created: Vec<InboxRow>,
    /// `null` until the handler committed. A `CANCELLED` row is the tombstone of an order
    /// cancelled before it was charged.
    pub payment: Option<Payment>,
    /// The order's `OrderCancelled` as pay's inbox received it, once the client cancelled.
    pub order_cancelled: Vec<InboxRow>,
    /// The credit back of a charged order that was cancelled; `null` otherwise.
    pub refund: Option<Refund>,
    /// The answers to order, from pay's outbox (a cancelled order's refund or cancellation
    /// is one more): `attempts` publishes, `sent_at` confirmed.
    pub replies: Vec<OutboxRow>,
}

/// The inbox row of the order's `OrderCreated`, the payment and the reply's outbox row.
#[utoipa::path(get, path = "/admin/payments/{order_id}/story", tag = "admin",
    security(("admin_token" = [])),
    params(("order_id" = Uuid, Path, description = "the order id")),
    responses(
        (status = 200, description = "pay's rows about the order (empty lists when pay never saw it)", body = PaymentStory),
        (status = 400, description = "order_id is not a UUID", body = common::openapi::ErrorBody),
        AdminErrors))]
async fn payment_story(
    State(pool): State<PgPool>,
    Path(order_id): Path<Uuid>,
) -> Result<Json<PaymentStory>, ApiError> {
    let aggregate = order_id.to_string();
    Ok(Json(PaymentStory {
        order_created: admin::inbox_about(&pool, "order_id", &aggregate, &[ORDER_CREATED.name])
            .await?,
        payment: accounts::payment_of(&pool, order_id).await?,
        order_cancelled: admin::inbox_about(&pool, "order_id", &aggregate, &[ORDER_CANCELLED.name])
            .await?,
        refund: accounts::refund_of(&pool, order_id).await?,
        replies: admin::outbox_about(
            &pool,
            &aggregate,
            &[
                PAYMENT_COMPLETED.name,
                PAYMENT_FAILED.name,
                PAYMENT_REFUNDED.name,
                PAYMENT_CANCELLED.name,
            ],
        )
        .await?,
    }))
}

/// The story route, for pay's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(payment_story), components(schemas(PaymentStory, Refund)))]
pub struct StoryDoc;
