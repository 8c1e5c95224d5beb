//! Pay's answers through order's inbox: an order changes state once, whatever arrives later.

use std::sync::Arc;

use message_table::inbox::{Inbox, Incoming, Outcome};
use order::payment_results::PaymentResultHandler;
use serde_json::json;
use sqlx::PgPool;
use test_kit::TestDb;
use uuid::Uuid;

fn answer(event_type: &str, order_id: Uuid) -> Incoming {
    Incoming {
        message_id: Some(Uuid::now_v7().to_string()),
        event_type: Some(event_type.into()),
        content_type: Some("application/json".into()),
        timestamp: None,
        headers: json!({}),
        body: serde_json::to_vec(&json!({ "order_id": order_id, "reason": "insufficient_funds" }))
            .unwrap(),
    }
}

/// A fresh order database and its inbox with the real handler.
async fn order_inbox() -> (TestDb, Inbox) {
    let db = TestDb::new(&order::MIGRATOR).await;
    let inbox = Inbox::new(
        db.pool.clone(),
        Arc::new(PaymentResultHandler),
        test_kit::fast_inbox(),
    );
    (db, inbox)
}

async fn new_order(pool: &PgPool) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO orders (id, user_id, item, amount_cents, message_id) VALUES ($1, 'alice', 'book', 100, $2)")
        .bind(id)
        .bind(Uuid::now_v7())
        .execute(pool)
        .await
        .unwrap();
    id
}

async fn status(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_order_is_settled_once_and_a_contradicting_answer_is_dead_not_applied() {
    let (db, inbox) = order_inbox().await;
    let order_id = new_order(&db.pool).await;

    assert_eq!(
        inbox
            .receive(answer("PaymentCompleted", order_id))
            .await
            .unwrap(),
        Outcome::Processed
    );
    assert_eq!(status(&db.pool, order_id).await, "PAID");

    // A contradicting answer (another message id) does not flip the order; it is visible.
    let outcome = inbox
        .receive(answer("PaymentFailed", order_id))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Dead { reason } if reason.contains("already PAID")),
        "{outcome:?}"
    );
    assert_eq!(status(&db.pool, order_id).await, "PAID");

    // The same answer again under a new id is harmless.
    assert_eq!(
        inbox
            .receive(answer("PaymentCompleted", order_id))
            .await
            .unwrap(),
        Outcome::Processed
    );
    assert_eq!(status(&db.pool, order_id).await, "PAID");
}

#[tokio::test]
async fn a_failed_payment_moves_the_order_to_payment_failed_with_the_reason() {
    let (db, inbox) = order_inbox().await;
    let order_id = new_order(&db.pool).await;
    assert_eq!(
        inbox
            .receive(answer("PaymentFailed", order_id))
            .await
            .unwrap(),
        Outcome::Processed
    );
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, failure_reason FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("PAYMENT_FAILED", Some("insufficient_funds"))
    );
}

#[tokio::test]
async fn answers_about_unknown_orders_or_of_unknown_types_are_dead() {
    let (db, inbox) = order_inbox().await;
    let unknown = inbox
        .receive(answer("PaymentCompleted", Uuid::now_v7()))
        .await
        .unwrap();
    assert!(
        matches!(&unknown, Outcome::Dead { reason } if reason.contains("does not exist")),
        "{unknown:?}"
    );
    let order_id = new_order(&db.pool).await;
    let odd = inbox
        .receive(answer("PaymentRefunded", order_id))
        .await
        .unwrap();
    assert!(matches!(odd, Outcome::Dead { .. }), "{odd:?}");
    assert_eq!(status(&db.pool, order_id).await, "PENDING_PAYMENT");
}
