//! Read-only HTTP views: `GET /payments/{order_id}` and `GET /accounts/{user_id}`.

use axum::extract::State;
use chrono::{DateTime, Utc};
use common::http::{ApiError, Json, Path};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use crate::startup::AppState;

#[derive(Debug, Serialize, FromRow)]
pub struct Payment {
    #[serde(rename = "payment_id")]
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: String,
    pub amount_cents: i64,
    pub status: String,
    pub failure_reason: Option<String>,
    pub message_id: Uuid,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, FromRow)]
pub struct Account {
    pub user_id: String,
    pub balance_cents: i64,
    pub updated_at: DateTime<Utc>,
}

pub async fn get_payment(
    State(state): State<AppState>,
    Path(order_id): Path<Uuid>,
) -> Result<Json<Payment>, ApiError> {
    sqlx::query_as(
        "SELECT id, order_id, user_id, amount_cents, status, failure_reason, message_id, created_at
         FROM payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::NotFound(format!("no payment for order {order_id}")))
}

pub async fn get_account(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    sqlx::query_as("SELECT user_id, balance_cents, updated_at FROM accounts WHERE user_id = $1")
        .bind(&user_id)
        .fetch_optional(&state.pool)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("account {user_id:?} not found")))
}
