//! Cancelling an order: the state machine's guards in SQL, pay's compensation answers
//! through order's inbox in every order they may arrive in, and `POST /orders/{id}/cancel`.

use std::{sync::Arc, time::Duration};

use message_table::inbox::{Inbox, Incoming, Outcome};
use order::{
    OrderEvent, OrderStatus,
    payment_results::{PaymentOutcome, PaymentResultHandler},
    transition::{self, Applied, TransitionError},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use test_kit::TestDb;
use uuid::Uuid;

async fn insert_order(pool: &PgPool, status: OrderStatus) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders (id, user_id, item, amount_cents, message_id, status, failure_reason,
                             updated_at)
         VALUES ($1, 'alice', 'book', 100, $2, $3, 'before', now() - interval '1 hour')",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(status)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// The whole row as text, to see that a refused move left it untouched.
async fn row(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT row_to_json(o)::text FROM orders o WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn status(pool: &PgPool, id: Uuid) -> OrderStatus {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// What each event does in each state, written out here rather than read from the
/// machine: `Some(to)` a move, `None` kept, and the states missing from a row are refused.
fn expected(event: OrderEvent, from: OrderStatus) -> Result<Option<OrderStatus>, ()> {
    use OrderEvent as E;
    use OrderStatus as S;
    match (event, from) {
        (E::PaymentCompleted, S::PendingPayment) => Ok(Some(S::Paid)),
        (E::PaymentCompleted, S::Paid | S::CancelRequested | S::Cancelled | S::Refunded) => {
            Ok(None)
        }
        (E::PaymentFailed, S::PendingPayment) => Ok(Some(S::PaymentFailed)),
        (E::PaymentFailed, S::PaymentFailed | S::Cancelled) => Ok(None),
        (E::Cancel, S::PendingPayment) => Ok(Some(S::Cancelled)),
        (E::Cancel, S::Paid) => Ok(Some(S::CancelRequested)),
        (E::PaymentRefunded, S::CancelRequested | S::Cancelled) => Ok(Some(S::Refunded)),
        (E::PaymentRefunded, S::Refunded) => Ok(None),
        (E::PaymentCancelled, S::Cancelled) => Ok(None),
        _ => Err(()),
    }
}

/// Every event in every state, through the SQL of `transition::apply`: a move changes the
/// status (and `updated_at`); a kept or refused event leaves the row exactly as it was.
#[tokio::test]
async fn each_transition_is_guarded_in_sql_allowed_moves_move_and_refused_ones_touch_nothing() {
    let db = TestDb::new(&order::MIGRATOR).await;
    for event in OrderEvent::ALL {
        for from in OrderStatus::ALL {
            let id = insert_order(&db.pool, from).await;
            let before = row(&db.pool, id).await;
            let mut tx = db.pool.begin().await.unwrap();
            let result = transition::apply(&mut tx, id, event, None).await;
            tx.commit().await.unwrap();
            let after = row(&db.pool, id).await;
            let case = format!("{event} at {from}: {result:?}");
            match expected(event, from) {
                Ok(Some(to)) => {
                    assert!(matches!(result, Ok(Applied::Moved(s)) if s == to), "{case}");
                    assert_eq!(status(&db.pool, id).await, to, "{case}");
                    assert_ne!(before, after, "{case}");
                }
                Ok(None) => {
                    assert!(
                        matches!(result, Ok(Applied::Kept { status, .. }) if status == from),
                        "{case}"
                    );
                    assert_eq!(before, after, "{case}");
                }
                Err(()) => {
                    assert!(
                        matches!(result, Err(TransitionError::Refused { current, .. }) if current == from),
                        "{case}"
                    );
                    assert_eq!(before, after, "{case}");
                }
            }
        }
    }
    // An unknown order is neither moved nor created.
    let mut tx = db.pool.begin().await.unwrap();
    let missing = Uuid::now_v7();
    let result = transition::apply(&mut tx, missing, OrderEvent::Cancel, None).await;
    assert!(matches!(result, Err(TransitionError::NoOrder(id)) if id == missing));
}

/// The guard holds against a transaction that decided on an older state: a payment's
/// answer waiting behind a cancel that commits first finds the order cancelled and leaves
/// it so (never PAID). The cancel holds the row until the answer is seen waiting for it.
#[tokio::test]
async fn an_answer_waiting_behind_a_cancel_finds_the_order_cancelled_and_keeps_it() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let id = insert_order(&db.pool, OrderStatus::PendingPayment).await;
    let mut cancel = db.pool.begin().await.unwrap();
    let moved = transition::apply(&mut cancel, id, OrderEvent::Cancel, None)
        .await
        .unwrap();
    assert_eq!(moved, Applied::Moved(OrderStatus::Cancelled));

    let pool = db.pool.clone();
    let answer = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        let applied = order::payment_results::settle(&mut tx, id, &PaymentOutcome::Completed)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        applied
    });
    test_kit::eventually(
        "the answer waits for the row",
        Duration::from_secs(10),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (waiting == 1).then_some(())
        },
    )
    .await;
    cancel.commit().await.unwrap();
    let applied = answer.await.unwrap();
    assert!(
        matches!(
            applied,
            Applied::Kept {
                status: OrderStatus::Cancelled,
                ..
            }
        ),
        "{applied:?}"
    );
    assert_eq!(status(&db.pool, id).await, OrderStatus::Cancelled);
}

fn answer(event_type: &str, order_id: Uuid) -> Incoming {
    let body = match event_type {
        "PaymentCancelled" => json!({ "order_id": order_id }),
        "PaymentRefunded" => {
            json!({ "order_id": order_id, "payment_id": Uuid::now_v7(), "amount_cents": 100 })
        }
        _ => {
            json!({ "order_id": order_id, "payment_id": Uuid::now_v7(), "amount_cents": 100, "reason": null })
        }
    };
    Incoming {
        message_id: Some(Uuid::now_v7().to_string()),
        event_type: Some(event_type.into()),
        content_type: Some("application/json".into()),
        timestamp: None,
        headers: json!({}),
        body: serde_json::to_vec(&body).unwrap(),
    }
}

fn order_inbox(db: &TestDb) -> Inbox {
    Inbox::new(
        db.pool.clone(),
        Arc::new(PaymentResultHandler),
        test_kit::fast_inbox(),
    )
}

/// Cancels `id` as the endpoint does (the same transition), in its own transaction.
async fn cancel(pool: &PgPool, id: Uuid) -> OrderStatus {
    let mut tx = pool.begin().await.unwrap();
    let Applied::Moved(to) = transition::apply(&mut tx, id, OrderEvent::Cancel, None)
        .await
        .unwrap()
    else {
        panic!("a cancel always moves")
    };
    tx.commit().await.unwrap();
    to
}

/// Each interleaving of a cancel with pay's answers, as order's inbox receives them: the
/// order ends where the money is (REFUNDED once pay refunded, CANCELLED when nothing was
/// charged), every copy or late answer is processed without moving it, and only answers
/// that contradict the order's history are dead.
#[tokio::test]
async fn pay_s_answers_finish_a_cancel_in_whatever_order_and_number_they_arrive() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let inbox = order_inbox(&db);
    let processed = |o: Option<Outcome>| assert_eq!(o, Some(Outcome::Processed));

    // Paid, then cancelled: refunded. The refund delivered twice (one message id), and a
    // second refund message: no change.
    let paid = insert_order(&db.pool, OrderStatus::PendingPayment).await;
    processed(inbox.receive(answer("PaymentCompleted", paid)).await);
    assert_eq!(cancel(&db.pool, paid).await, OrderStatus::CancelRequested);
    let refund = answer("PaymentRefunded", paid);
    processed(inbox.receive(refund.clone()).await);
    assert_eq!(status(&db.pool, paid).await, OrderStatus::Refunded);
    assert_eq!(inbox.receive(refund).await, Some(Outcome::Duplicate));
    processed(inbox.receive(answer("PaymentRefunded", paid)).await);
    // The payment's answer once more, late: still refunded.
    processed(inbox.receive(answer("PaymentCompleted", paid)).await);
    assert_eq!(status(&db.pool, paid).await, OrderStatus::Refunded);

    // The race: cancelled while pay had charged and its answer was in flight. The late
    // PaymentCompleted must not make it PAID; the refund ends it.
    let raced = insert_order(&db.pool, OrderStatus::PendingPayment).await;
    assert_eq!(cancel(&db.pool, raced).await, OrderStatus::Cancelled);
    processed(inbox.receive(answer("PaymentCompleted", raced)).await);
    assert_eq!(status(&db.pool, raced).await, OrderStatus::Cancelled);
    processed(inbox.receive(answer("PaymentRefunded", raced)).await);
    assert_eq!(status(&db.pool, raced).await, OrderStatus::Refunded);

    // The same race with the refund overtaking the payment's answer.
    let overtaken = insert_order(&db.pool, OrderStatus::PendingPayment).await;
    cancel(&db.pool, overtaken).await;
    processed(inbox.receive(answer("PaymentRefunded", overtaken)).await);
    processed(inbox.receive(answer("PaymentCompleted", overtaken)).await);
    assert_eq!(status(&db.pool, overtaken).await, OrderStatus::Refunded);

    // Cancelled before pay charged: pay answers PaymentCancelled (twice, say); a failed
    // payment's answer arriving late changes nothing either.
    let never = insert_order(&db.pool, OrderStatus::PendingPayment).await;
    cancel(&db.pool, never).await;
    processed(inbox.receive(answer("PaymentCancelled", never)).await);
    processed(inbox.receive(answer("PaymentCancelled", never)).await);
    processed(inbox.receive(answer("PaymentFailed", never)).await);
    assert_eq!(status(&db.pool, never).await, OrderStatus::Cancelled);

    // Contradictions are dead and move nothing: a refund of an order never cancelled, a
    // "nothing charged" about a refunded one, a completion of a failed one.
    let pending = insert_order(&db.pool, OrderStatus::PendingPayment).await;
    let failed = insert_order(&db.pool, OrderStatus::PaymentFailed).await;
    for (event, id, at) in [
        ("PaymentRefunded", pending, OrderStatus::PendingPayment),
        ("PaymentCancelled", paid, OrderStatus::Refunded),
        ("PaymentCompleted", failed, OrderStatus::PaymentFailed),
    ] {
        let outcome = inbox.receive(answer(event, id)).await.unwrap();
        assert!(
            matches!(&outcome, Outcome::Dead { reason } if reason.contains(at.as_str())),
            "{event}: {outcome:?}"
        );
        assert_eq!(status(&db.pool, id).await, at);
    }
}

/// What a run of order's inbox left behind, comparable between two databases.
async fn state(pool: &PgPool) -> (Vec<String>, Vec<String>) {
    let orders = sqlx::query_scalar(
        "SELECT concat_ws(' ', id, status, coalesce(failure_reason, '-')) FROM orders ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let inbox = sqlx::query_scalar(
        "SELECT concat_ws(' ', message_id, event_type, status, attempts, coalesce(last_error, '-'))
         FROM inbox ORDER BY message_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (orders, inbox)
}

/// A batch of compensation answers does what they do one by one: moves in one statement
/// when every answer moves its order (refunds of orders cancelled both ways, with a
/// payment's answer), and one by one when one of them is kept or refused.
#[tokio::test]
async fn a_batch_of_compensation_answers_does_what_they_do_one_by_one() {
    let batched = TestDb::new(&order::MIGRATOR).await;
    let one_by_one = TestDb::new(&order::MIGRATOR).await;
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let states = [
        OrderStatus::CancelRequested,
        OrderStatus::Cancelled,
        OrderStatus::PendingPayment,
        OrderStatus::Cancelled,
        OrderStatus::Cancelled,
        OrderStatus::Paid,
    ];
    for db in [&batched, &one_by_one] {
        for (id, s) in ids.iter().zip(states) {
            sqlx::query(
                "INSERT INTO orders (id, user_id, item, amount_cents, message_id, status)
                 VALUES ($1, 'alice', 'book', 100, $2, $3)",
            )
            .bind(id)
            .bind(Uuid::now_v7())
            .bind(s)
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }
    let moving = vec![
        answer("PaymentRefunded", ids[0]),
        answer("PaymentRefunded", ids[1]),
        answer("PaymentCompleted", ids[2]),
    ];
    let batches = vec![
        moving.clone(),
        vec![
            answer("PaymentRefunded", ids[3]),
            answer("PaymentCancelled", ids[4]),
        ],
        vec![
            answer("PaymentRefunded", ids[4]),
            answer("PaymentCancelled", ids[5]),
        ],
    ];
    let inbox = order_inbox(&batched);
    let mut batch_outcomes = Vec::new();
    for batch in batches.clone() {
        batch_outcomes.extend(inbox.receive_batch(batch).await);
    }
    let mut cfg = test_kit::fast_inbox();
    cfg.batch_size = 1;
    let inbox = Inbox::new(one_by_one.pool.clone(), Arc::new(PaymentResultHandler), cfg);
    let mut single_outcomes = Vec::new();
    for msg in batches.into_iter().flatten() {
        single_outcomes.push(inbox.receive(msg).await);
    }
    assert_eq!(batch_outcomes, single_outcomes);
    assert_eq!(state(&batched.pool).await, state(&one_by_one.pool).await);

    // The moving batch was one transaction.
    let writers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM orders WHERE id = ANY($1)")
            .bind(&ids[..3])
            .fetch_one(&batched.pool)
            .await
            .unwrap();
    assert_eq!(writers, 1);
    let mut ended = Vec::new();
    for id in &ids {
        ended.push(status(&batched.pool, *id).await);
    }
    assert_eq!(
        ended,
        [
            OrderStatus::Refunded,
            OrderStatus::Refunded,
            OrderStatus::Paid,
            OrderStatus::Refunded,
            OrderStatus::Refunded,
            OrderStatus::Paid,
        ]
    );
    // Only the PaymentCancelled about a paid order contradicts it.
    let dead = batch_outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Dead { .. })))
        .count();
    assert_eq!(dead, 1, "{batch_outcomes:?}");
}

// ---------------------------------------------------------------------------------------
// POST /orders/{id}/cancel

struct App {
    base: String,
    db: TestDb,
    http: reqwest::Client,
}

async fn spawn_order() -> App {
    let amqp = test_kit::test_amqp();
    let db = TestDb::new(&order::MIGRATOR).await;
    let messaging = test_kit::messaging(&amqp, "test.order", messages::ORDER_QUEUE.routing_keys);
    let app = test_kit::spawn_order(test_kit::service_config(&db.url, &messaging, 12)).await;
    App {
        base: app.base,
        db,
        http: reqwest::Client::new(),
    }
}

impl App {
    async fn buy(&self) -> Uuid {
        let res = self
            .http
            .post(format!("{}/buy", self.base))
            .json(&json!({"user_id": "alice", "item": "book", "amount_cents": 700}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        body["order_id"].as_str().unwrap().parse().unwrap()
    }

    async fn cancel(&self, id: &str, key: Option<&str>) -> (StatusCode, bool, Value) {
        let mut req = self.http.post(format!("{}/orders/{id}/cancel", self.base));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.unwrap();
        let replayed = res.headers().get("idempotent-replayed").is_some();
        (res.status(), replayed, res.json().await.unwrap())
    }

    /// What a cancel writes: cancellations, and OrderCancelled messages.
    async fn written(&self) -> (i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM order_cancellations),
                    (SELECT count(*) FROM outbox WHERE event_type = 'OrderCancelled')",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }
}

/// A pending order is cancelled at once, a paid one is asked to be refunded: 202 with the
/// order, and its OrderCancelled (with the order's account and amount) in the outbox in
/// the same transaction.
#[tokio::test]
async fn a_cancel_answers_202_with_the_order_and_writes_its_message() {
    let app = spawn_order().await;
    let pending = app.buy().await;
    let (code, replayed, body) = app.cancel(&pending.to_string(), None).await;
    assert_eq!((code, replayed), (StatusCode::ACCEPTED, false), "{body}");
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(body["order_id"], pending.to_string());

    let paid = app.buy().await;
    sqlx::query("UPDATE orders SET status = 'PAID' WHERE id = $1")
        .bind(paid)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (code, _, body) = app.cancel(&paid.to_string(), None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "CANCEL_REQUESTED");

    let messages: Vec<(Uuid, Value)> = sqlx::query_as(
        "SELECT c.order_id, x.payload FROM order_cancellations c
         JOIN outbox x ON x.id = c.message_id AND x.event_type = 'OrderCancelled'
              AND x.routing_key = 'order.cancelled'
         ORDER BY c.order_id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(messages.len(), 2);
    for (id, payload) in messages {
        assert_eq!(
            payload,
            json!({ "order_id": id, "user_id": "alice", "amount_cents": 700 })
        );
    }
}

/// Every bad cancel gets its status and JSON error code and writes nothing; a retry with
/// the key of a cancel that worked gets that answer again, not a 409.
#[tokio::test]
async fn bad_cancels_are_refused_with_their_codes_and_a_repeated_key_replays() {
    let app = spawn_order().await;
    let id = app.buy().await;
    let (code, _, first) = app.cancel(&id.to_string(), Some("cancel-1")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(app.written().await, (1, 1));

    // The same key again: the same answer, marked, nothing more written.
    let (code, replayed, again) = app.cancel(&id.to_string(), Some("cancel-1")).await;
    assert_eq!((code, replayed), (StatusCode::ACCEPTED, true));
    assert_eq!(again["order_id"], first["order_id"]);
    assert_eq!(again["status"], "CANCELLED");

    let failed = app.buy().await;
    sqlx::query("UPDATE orders SET status = 'PAYMENT_FAILED' WHERE id = $1")
        .bind(failed)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let long_key = "k".repeat(256);
    let cases: Vec<(String, Option<&str>, StatusCode, &str)> = vec![
        // Cancelled already, without a key or with another one.
        (
            id.to_string(),
            None,
            StatusCode::CONFLICT,
            "order_not_cancellable",
        ),
        (
            id.to_string(),
            Some("cancel-2"),
            StatusCode::CONFLICT,
            "order_not_cancellable",
        ),
        (
            failed.to_string(),
            None,
            StatusCode::CONFLICT,
            "order_not_cancellable",
        ),
        // The key of another order's cancel.
        (
            failed.to_string(),
            Some("cancel-1"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
        ),
        (
            Uuid::now_v7().to_string(),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "not-a-uuid".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            id.to_string(),
            Some(long_key.as_str()),
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        ),
    ];
    for (target, key, status, code) in cases {
        let (got, _, body) = app.cancel(&target, key).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{target} {key:?}: {body}"
        );
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    // The 409 names the status.
    let (_, _, body) = app.cancel(&failed.to_string(), None).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("PAYMENT_FAILED"), "{message}");
    // Nothing of the refused ones was written; the failed order is as it was.
    assert_eq!(app.written().await, (1, 1));
    assert_eq!(
        status(&app.db.pool, failed).await,
        OrderStatus::PaymentFailed
    );
    // A refused cancel stores no key: the same key is free for a cancel that can happen.
    let other = app.buy().await;
    let (code, replayed, _) = app.cancel(&other.to_string(), Some("cancel-2")).await;
    assert_eq!((code, replayed), (StatusCode::ACCEPTED, false));
}

/// Eight concurrent cancels of one order: with one key, all get the one cancel's answer;
/// without keys, one is accepted and the others are 409. Either way one cancellation and
/// one OrderCancelled.
#[tokio::test]
async fn concurrent_cancels_of_one_order_cancel_it_once() {
    let app = spawn_order().await;
    let keyed = app.buy().await;
    let id = keyed.to_string();
    let answers =
        futures::future::join_all((0..8).map(|_| app.cancel(&id, Some("same-cancel")))).await;
    for (code, _, body) in &answers {
        assert_eq!(*code, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "CANCELLED");
    }
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| !replayed).count(),
        1
    );
    assert_eq!(app.written().await, (1, 1));

    let unkeyed = app.buy().await;
    let id = unkeyed.to_string();
    let answers = futures::future::join_all((0..8).map(|_| app.cancel(&id, None))).await;
    let mut codes: Vec<StatusCode> = answers.iter().map(|(c, _, _)| *c).collect();
    codes.sort();
    assert_eq!(codes[0], StatusCode::ACCEPTED);
    assert!(
        codes[1..].iter().all(|c| *c == StatusCode::CONFLICT),
        "{codes:?}"
    );
    assert_eq!(app.written().await, (2, 2));
}

/// An order's messages are numbered in the order they are written: `OrderCreated` 1, its
/// `OrderCancelled` 2 (the relay publishes, and pay applies, them in that order).
#[tokio::test]
async fn an_orders_messages_are_numbered_created_then_cancelled() {
    let app = spawn_order().await;
    let id = app.buy().await;
    let (code, _, body) = app.cancel(&id.to_string(), None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let numbered: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT event_type, aggregate_seq FROM outbox WHERE aggregate_id = $1 ORDER BY id",
    )
    .bind(id.to_string())
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        numbered,
        [
            ("OrderCreated".to_string(), Some(1)),
            ("OrderCancelled".to_string(), Some(2))
        ]
    );
}
