//! `GET /admin/orders/{id}/story`: order's half of one order's story, for the dashboard.
//!
//! # Why
//! The local message table is a chain of rows in two databases: the order and its
//! `OrderCreated` outbox row here, pay's inbox row, payment and reply outbox row there, and
//! the reply's inbox row here again. A learner should see that chain, with the time of every
//! step and the attempts each took, without reading SQL. Each service shows only its own
//! rows (pay's half is pay's `/admin/payments/{order_id}/story`); the page joins them, as
//! nothing else may read both databases.

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

use crate::orders::{self, Order};

/// The route, to be nested under `/admin` (behind the token).
pub fn admin_routes(pool: PgPool) -> Router {
    Router::new()
        .route("/orders/{id}/story", get(order_story))
        .with_state(pool)
}

/// Order's rows about one order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderStory {
    /// Committed at `created_at`; settled at `updated_at` once not `PENDING_PAYMENT`.
    pub order: Order,
    /// Its `OrderCreated` message: `attempts` publishes, `sent_at` when the broker
    /// confirmed it. `null` once retention deleted it.
    pub order_created: Option<OutboxRow>,
    /// Its `OrderCancelled` message, once the client cancelled it; `null` before (or once
    /// retention deleted it).
    pub order_cancelled: Option<OutboxRow>,
    /// Pay's answers as this inbox received them (normally one; a cancelled order's
    /// refund or cancellation is one more), oldest first.
    pub replies: Vec<InboxRow>,
}

/// The order, its `OrderCreated` (and `OrderCancelled`) outbox rows and the inbox rows of
/// pay's answers.
#[utoipa::path(get, path = "/admin/orders/{id}/story", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "the order id")),
    responses(
        (status = 200, description = "order's rows about the order", body = OrderStory),
        (status = 400, description = "id is not a UUID", body = common::openapi::ErrorBody),
        AdminErrors))]
async fn order_story(
    State(pool): State<PgPool>,
    Path(id): Path<Uuid>,
) -> Result<Json<OrderStory>, ApiError> {
    let order = orders::find(&pool, id).await?;
    let aggregate = id.to_string();
    let (created, cancelled): (Vec<_>, Vec<_>) = admin::outbox_about(
        &pool,
        &aggregate,
        &[ORDER_CREATED.name, ORDER_CANCELLED.name],
    )
    .await?
    .into_iter()
    .partition(|row| row.event_type == ORDER_CREATED.name);
    let order_created = created.into_iter().find(|row| row.id == order.message_id);
    // One cancellation per order (a second is refused), so at most one row.
    let order_cancelled = cancelled.into_iter().next();
    let replies = admin::inbox_about(
        &pool,
        "order_id",
        &aggregate,
        &[
            PAYMENT_COMPLETED.name,
            PAYMENT_FAILED.name,
            PAYMENT_REFUNDED.name,
            PAYMENT_CANCELLED.name,
        ],
    )
    .await?;
    Ok(Json(OrderStory {
        order,
        order_created,
        order_cancelled,
        replies,
    }))
}

/// The story route, for order's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(order_story), components(schemas(OrderStory)))]
pub struct StoryDoc;
