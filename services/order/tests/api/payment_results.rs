//! Pay's answers through order's inbox: an order changes state once, whatever arrives later.

use std::{sync::Arc, time::Duration};

use message_table::inbox::{Inbox, Incoming, Outcome};
use order::payment_results::PaymentResultHandler;
use serde_json::{Value, json};
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
        body: serde_json::to_vec(&json!({ "order_id": order_id, "payment_id": Uuid::now_v7(), "amount_cents": 100, "reason": "insufficient_funds" }))
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
        .receive(answer("PaymentDisputed", order_id))
        .await
        .unwrap();
    assert!(matches!(odd, Outcome::Dead { .. }), "{odd:?}");
    assert_eq!(status(&db.pool, order_id).await, "PENDING_PAYMENT");
}

fn message(event_type: &str, body: Value) -> Incoming {
    Incoming {
        message_id: Some(Uuid::now_v7().to_string()),
        event_type: Some(event_type.into()),
        content_type: Some("application/json".into()),
        timestamp: None,
        headers: json!({}),
        body: serde_json::to_vec(&body).unwrap(),
    }
}

async fn insert_order(pool: &PgPool, id: Uuid, status: &str) {
    sqlx::query(
        "INSERT INTO orders (id, user_id, item, amount_cents, message_id, status)
         VALUES ($1, 'alice', 'book', 100, $2, $3)",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(status)
    .execute(pool)
    .await
    .unwrap();
}

/// What a run of order's inbox left behind, comparable between two databases: every
/// order's status and reason, every inbox row (without its timestamps).
async fn state(pool: &PgPool) -> (Vec<String>, Vec<String>) {
    let orders = sqlx::query_scalar(
        "SELECT concat_ws(' ', id, status, coalesce(failure_reason, '-'))
         FROM orders ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let inbox = sqlx::query_scalar(
        "SELECT concat_ws(' ', message_id, event_type, payload, status, attempts,
                          coalesce(last_error, '-'), next_attempt_at IS NULL)
         FROM inbox ORDER BY message_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (orders, inbox)
}

/// The transactions that last wrote these orders and these inbox rows.
async fn writers(pool: &PgPool, orders: &[Uuid], messages: &[Uuid]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT x) FROM (
             SELECT xmin::text AS x FROM orders WHERE id = ANY($1)
             UNION ALL SELECT xmin::text FROM inbox WHERE message_id = ANY($2)) w",
    )
    .bind(orders)
    .bind(messages)
    .fetch_one(pool)
    .await
    .unwrap()
}

fn id_of(msg: &Incoming) -> Uuid {
    msg.message_id.as_deref().unwrap().parse().unwrap()
}

/// Order's batch handler settles in two statements what the handler settles message by
/// message, with the same orders, inbox rows and outcomes: completed (a reason in the
/// payload ignored), failed with and without a reason, a copy of a message in the same
/// batch; an answer for an order already settled that way (kept, in the batch); and, each in
/// a batch with an answer that would settle, what makes a batch go one by one: a
/// contradicting answer, an unknown order, an unreadable payload, an unexpected type, two
/// answers about one order.
#[tokio::test]
async fn a_batch_settles_exactly_as_its_answers_one_by_one() {
    let batched = TestDb::new(&order::MIGRATOR).await;
    let one_by_one = TestDb::new(&order::MIGRATOR).await;
    let pending: Vec<Uuid> = (0..9).map(|_| Uuid::now_v7()).collect();
    let (paid, paid_too) = (Uuid::now_v7(), Uuid::now_v7());
    for db in [&batched, &one_by_one] {
        for id in &pending {
            insert_order(&db.pool, *id, "PENDING_PAYMENT").await;
        }
        insert_order(&db.pool, paid, "PAID").await;
        insert_order(&db.pool, paid_too, "PAID").await;
    }
    let completed = |id: Uuid| {
        message(
            "PaymentCompleted",
            json!({ "order_id": id, "payment_id": Uuid::now_v7(), "amount_cents": 100 }),
        )
    };
    let p = &pending;
    let first = message(
        "PaymentCompleted",
        json!({ "order_id": p[0], "payment_id": Uuid::now_v7(), "amount_cents": 100, "reason": "ignored" }),
    );
    let settling = vec![
        first.clone(),
        message(
            "PaymentFailed",
            json!({ "order_id": p[1], "payment_id": Uuid::now_v7(), "amount_cents": 100, "reason": "insufficient_funds" }),
        ),
        message(
            "PaymentFailed",
            json!({ "order_id": p[2], "payment_id": Uuid::now_v7(), "amount_cents": 100 }),
        ),
        message(
            "PaymentFailed",
            json!({ "order_id": p[3], "payment_id": Uuid::now_v7(), "amount_cents": 100, "reason": "unknown_user" }),
        ),
        first,
    ];
    let with_kept = vec![completed(p[4]), completed(paid)];
    let batches = vec![
        settling.clone(),
        with_kept.clone(),
        vec![
            completed(p[5]),
            message(
                "PaymentFailed",
                json!({ "order_id": paid_too, "payment_id": Uuid::now_v7(), "amount_cents": 100, "reason": "late" }),
            ),
        ],
        vec![completed(p[6]), completed(Uuid::now_v7())],
        vec![
            completed(p[7]),
            message("PaymentCompleted", json!({ "order_id": "not-a-uuid" })),
            message("PaymentDisputed", json!({ "order_id": p[7] })),
        ],
        vec![completed(p[8]), completed(p[8])],
    ];

    let inbox = Inbox::new(
        batched.pool.clone(),
        Arc::new(PaymentResultHandler),
        test_kit::fast_inbox(),
    );
    let mut batch_outcomes = Vec::new();
    for batch in batches.clone() {
        batch_outcomes.extend(inbox.receive_batch(batch).await);
    }
    let mut cfg = test_kit::fast_inbox();
    cfg.batch_size = 1;
    let inbox = Inbox::new(one_by_one.pool.clone(), Arc::new(PaymentResultHandler), cfg);
    let mut single_outcomes = Vec::new();
    for msg in batches.into_iter().flatten() {
        single_outcomes.push(Some(inbox.receive(msg).await.unwrap()));
    }

    assert_eq!(batch_outcomes, single_outcomes);
    assert_eq!(state(&batched.pool).await, state(&one_by_one.pool).await);
    // The settling batch took the batch path: one transaction wrote its orders and rows.
    let ids: Vec<Uuid> = settling.iter().map(id_of).collect();
    assert_eq!(writers(&batched.pool, &pending[..4], &ids).await, 1);
    // So did the batch with an answer its order already had: kept, not redone one by one.
    let kept_ids: Vec<Uuid> = with_kept.iter().map(id_of).collect();
    assert_eq!(writers(&batched.pool, &pending[4..5], &kept_ids).await, 1);
    // (One by one: a transaction per message, and a savepoint around each handler.)
    assert!(writers(&one_by_one.pool, &pending[..4], &ids).await > 1);
    // And what both did, spelled out.
    let orders: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, failure_reason FROM orders WHERE id = ANY($1) ORDER BY id")
            .bind(&pending[..4])
            .fetch_all(&batched.pool)
            .await
            .unwrap();
    let reason = |r: &str| Some(r.to_string());
    assert_eq!(
        orders,
        [
            ("PAID".into(), None),
            ("PAYMENT_FAILED".into(), reason("insufficient_funds")),
            ("PAYMENT_FAILED".into(), None),
            ("PAYMENT_FAILED".into(), reason("unknown_user")),
        ]
    );
    for id in &pending[4..] {
        assert_eq!(status(&batched.pool, *id).await, "PAID");
    }
    assert_eq!(status(&batched.pool, paid_too).await, "PAID");
    let dead = batch_outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Dead { .. })))
        .count();
    let duplicates = batch_outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Duplicate)))
        .count();
    // The contradiction, the unknown order, the bad payload, the unexpected type.
    assert_eq!((dead, duplicates), (4, 1), "{batch_outcomes:?}");
}

/// The deadlocks PostgreSQL has counted in this database, once every session that may
/// have hit one has ended (a session reports its counts when it ends at the latest).
async fn deadlocks(db: &TestDb) -> i64 {
    db.pool.close().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    test_kit::eventually(
        "the test's sessions ended",
        Duration::from_secs(10),
        || async {
            let n: i32 = sqlx::query_scalar(
                "SELECT numbackends FROM pg_stat_database WHERE datname = current_database()",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (n == 1).then_some(())
        },
    )
    .await;
    let n = sqlx::query_scalar(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

/// Two batches answering for the same orders, delivered in opposite orders, at the same
/// time: both finish, every answer processed, and no deadlock happened on the way (the
/// inbox would run a deadlocked batch again, so the outcomes alone would not show one).
/// To make them meet, the test holds the lock of a middle order until both batches wait:
/// batches that locked in their delivery order would then hold a half each and deadlock.
#[tokio::test]
async fn concurrent_batches_over_the_same_orders_in_opposite_orders_do_not_deadlock() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let inbox = Inbox::new(
        db.pool.clone(),
        Arc::new(PaymentResultHandler),
        test_kit::fast_inbox(),
    );
    let rounds = 3;
    for _ in 0..rounds {
        let orders: Vec<Uuid> = (0..16).map(|_| Uuid::now_v7()).collect();
        for id in &orders {
            insert_order(&db.pool, *id, "PENDING_PAYMENT").await;
        }
        let answers = |ids: &mut dyn Iterator<Item = &Uuid>| -> Vec<Incoming> {
            ids.map(|id| {
                message(
                    "PaymentCompleted",
                    json!({ "order_id": id, "payment_id": Uuid::now_v7(), "amount_cents": 100 }),
                )
            })
            .collect()
        };
        let up = answers(&mut orders.iter());
        let down = answers(&mut orders.iter().rev());

        let mut holder = db.pool.begin().await.unwrap();
        sqlx::query("SELECT id FROM orders WHERE id = $1 FOR UPDATE")
            .bind(orders[8])
            .execute(&mut *holder)
            .await
            .unwrap();
        let release = async {
            test_kit::eventually(
                "both batches waiting for a lock",
                Duration::from_secs(10),
                || async {
                    let waiting: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    )
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
                    (waiting == 2).then_some(())
                },
            )
            .await;
            holder.commit().await.unwrap();
        };
        let ((a, b), ()) = tokio::join!(
            async { tokio::join!(inbox.receive_batch(up), inbox.receive_batch(down)) },
            release
        );
        assert!(
            a.iter().chain(&b).all(|o| *o == Some(Outcome::Processed)),
            "{a:?} {b:?}"
        );
        for id in &orders {
            assert_eq!(status(&db.pool, *id).await, "PAID");
        }
    }
    let stats = message_table::inbox::stats(&db.pool).await.unwrap();
    assert_eq!(
        (stats.processed, stats.failed, stats.dead),
        (rounds * 32, 0, 0)
    );
    assert_eq!(deadlocks(&db).await, 0);
}
