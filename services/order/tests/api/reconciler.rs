//! One reconciliation pass at a time, across instances: the advisory lock. And a pass
//! never settles an order the client cancelled while it asked pay.

use std::time::Duration;

use axum::{Json, Router, extract::State, routing::post};
use message_table::advisory_lock::AdvisoryLock;
use order::{
    OrderEvent, OrderStatus,
    reconciler::{LOCK_KEY, Reconciler, ReconcilerConfig, pay_client},
    transition,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use test_kit::TestDb;
use uuid::Uuid;

fn reconciler(db: &TestDb) -> Reconciler {
    let cfg = ReconcilerConfig {
        // Nothing is stale in this database: pay is never asked.
        pay_url: "http://127.0.0.1:9".into(),
        interval: Duration::from_millis(100),
        pending_after: Duration::from_secs(60),
        batch_size: 10,
    };
    Reconciler::new(
        db.pool.clone(),
        cfg,
        Duration::from_secs(3600),
        pay_client().unwrap(),
    )
}

#[tokio::test]
async fn a_second_runner_skips_its_turn_while_another_holds_the_lock() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let (first, second) = (reconciler(&db), reconciler(&db));

    let held = AdvisoryLock::try_acquire(&db.pool, LOCK_KEY)
        .await
        .unwrap()
        .expect("the lock is free");
    assert_eq!(second.run_once().await.unwrap(), None);
    assert_eq!(second.reports().lock().unwrap().since_start.skipped, 1);
    held.unlock().await;

    let report = first
        .run_once()
        .await
        .unwrap()
        .expect("the lock is free again");
    assert_eq!((report.looked_at, report.error), (0, None));
    // The pass released the lock when it ended.
    assert!(second.run_once().await.unwrap().is_some());
}

#[test]
fn settings_out_of_bounds_are_refused() {
    let ok = ReconcilerConfig {
        pay_url: "http://pay:8762".into(),
        interval: Duration::from_secs(60),
        pending_after: Duration::from_secs(300),
        batch_size: 100,
    };
    ok.validate().unwrap();
    for (bad, variable) in [
        (
            ReconcilerConfig {
                batch_size: 101,
                ..ok.clone()
            },
            "RECONCILER_BATCH_SIZE",
        ),
        (
            ReconcilerConfig {
                batch_size: 0,
                ..ok.clone()
            },
            "RECONCILER_BATCH_SIZE",
        ),
        (
            ReconcilerConfig {
                interval: Duration::ZERO,
                ..ok.clone()
            },
            "RECONCILER_INTERVAL_SECS",
        ),
        (
            ReconcilerConfig {
                pay_url: "pay:8762".into(),
                ..ok.clone()
            },
            "ORDER_PAY_URL",
        ),
    ] {
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(variable), "{err}");
    }
}

/// A stand-in for pay's lookup that, while it is asked, lets the client cancel the orders
/// named in `cancel` (as `POST /orders/{id}/cancel` does), then answers `status` for every
/// order asked about.
async fn pay_that_sees_a_cancel(pool: PgPool, cancel: Vec<Uuid>, status: &'static str) -> String {
    async fn lookup(
        State((pool, cancel, status)): State<(PgPool, Vec<Uuid>, &'static str)>,
        Json(req): Json<Value>,
    ) -> Json<Value> {
        for id in &cancel {
            let mut tx = pool.begin().await.unwrap();
            transition::apply(&mut tx, *id, OrderEvent::Cancel, None)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let payments: Vec<Value> = req["order_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| {
                json!({ "order_id": id, "status": status, "payment_id": Uuid::now_v7(),
                        "user_id": "alice", "amount_cents": 100 })
            })
            .collect();
        Json(json!({ "payments": payments }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/payments/lookup", post(lookup))
        .with_state((pool, cancel, status));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn stale_order(pool: &PgPool) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders (id, user_id, item, amount_cents, message_id, created_at)
         VALUES ($1, 'alice', 'book', 100, $2, now() - interval '1 hour')",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn status(pool: &PgPool, id: Uuid) -> OrderStatus {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn reconciler_asking(db: &TestDb, pay_url: String) -> Reconciler {
    let cfg = ReconcilerConfig {
        pay_url,
        interval: Duration::from_secs(60),
        pending_after: Duration::from_secs(60),
        batch_size: 10,
    };
    Reconciler::new(
        db.pool.clone(),
        cfg,
        Duration::from_secs(3600),
        pay_client().unwrap(),
    )
}

/// The race the reconciler must lose: it reads an order as pending, and while it asks pay
/// (which answers COMPLETED) the client cancels the order. The order stays CANCELLED, never
/// PAID (pay's refund answers for the charge), and the pass reports nothing wrong.
#[tokio::test]
async fn an_order_cancelled_while_the_reconciler_asks_pay_is_never_settled_as_paid() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let cancelled = stale_order(&db.pool).await;
    let untouched = stale_order(&db.pool).await;
    let pay = pay_that_sees_a_cancel(db.pool.clone(), vec![cancelled], "COMPLETED").await;

    let report = reconciler_asking(&db, pay)
        .run_once()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.error, None);
    assert_eq!(status(&db.pool, cancelled).await, OrderStatus::Cancelled);
    assert_eq!(status(&db.pool, untouched).await, OrderStatus::Paid);
    assert_eq!(
        (
            report.found.settled_by_pay,
            report.fixed.settled,
            report.unfixed_count
        ),
        (2, 1, 0)
    );
}

/// Pay has undone an order (a tombstone, a refund) only when the client cancelled it: for
/// an order cancelled during the pass that is the expected answer, left to pay's message;
/// for one still pending here it is reported, and nothing is changed.
#[tokio::test]
async fn an_order_pay_has_undone_is_left_alone_and_reported_only_if_never_cancelled() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let cancelled = stale_order(&db.pool).await;
    let pending = stale_order(&db.pool).await;
    let pay = pay_that_sees_a_cancel(db.pool.clone(), vec![cancelled], "CANCELLED").await;

    let report = reconciler_asking(&db, pay)
        .run_once()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.error, None);
    assert_eq!(status(&db.pool, cancelled).await, OrderStatus::Cancelled);
    assert_eq!(status(&db.pool, pending).await, OrderStatus::PendingPayment);
    assert_eq!(report.unfixed_count, 1);
    assert_eq!(report.unfixed[0].order_id, pending);
    assert!(report.unfixed[0].reason.contains("CANCELLED"), "{report:?}");
    assert_eq!(report.fixed.settled + report.fixed.republished, 0);
}
