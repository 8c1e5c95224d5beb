//! Undoing a cancelled order through pay's inbox: refunds, tombstones, and money conserved
//! in every order the two messages about an order may arrive in.

use std::{sync::Arc, time::Duration};

use message_table::inbox::{Inbox, Incoming, MessageHandler, Outcome};
use pay::payments::PaymentHandler;
use serde_json::{Value, json};
use sqlx::PgPool;
use test_kit::TestDb;
use uuid::Uuid;

const START: i64 = 100_000_000;

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

/// An order's two messages: its OrderCreated and its OrderCancelled.
fn order(user: &str, amount: i64) -> (Uuid, Incoming, Incoming) {
    let id = Uuid::now_v7();
    let created = message(
        "OrderCreated",
        json!({ "order_id": id, "user_id": user, "item": "book", "amount_cents": amount }),
    );
    let cancelled = message(
        "OrderCancelled",
        json!({ "order_id": id, "user_id": user, "amount_cents": amount }),
    );
    (id, created, cancelled)
}

fn handler() -> Arc<dyn MessageHandler> {
    Arc::new(PaymentHandler::new(Duration::from_secs(60)))
}

fn inbox(db: &TestDb) -> Inbox {
    Inbox::new(db.pool.clone(), handler(), test_kit::fast_inbox())
}

async fn balance(pool: &PgPool, user: &str) -> i64 {
    sqlx::query_scalar("SELECT balance_cents FROM accounts WHERE user_id = $1")
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The order's payment row's status, if any.
async fn payment(pool: &PgPool, order_id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn refunds(pool: &PgPool, order_id: Uuid) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT amount_cents, user_id FROM refunds WHERE order_id = $1")
        .bind(order_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The event types of pay's replies about `order_id`, oldest first, and their payloads.
async fn replies(pool: &PgPool, order_id: Uuid) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT event_type, payload FROM outbox WHERE payload->>'order_id' = $1 ORDER BY id",
    )
    .bind(order_id.to_string())
    .fetch_all(pool)
    .await
    .unwrap()
}

fn types(replies: &[(String, Value)]) -> Vec<&str> {
    replies.iter().map(|(t, _)| t.as_str()).collect()
}

/// Charged, then cancelled: the payment is refunded, the amount back on the account, one
/// `refunds` row, and `PaymentRefunded` naming the payment. The cancellation delivered
/// twice, and a second cancellation message: still one refund, one credit, one answer.
#[tokio::test]
async fn a_charge_is_refunded_once_however_often_its_cancellation_arrives() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = inbox(&db);
    let (id, created, cancelled) = order("alice", 1500);

    assert_eq!(inbox.receive(created).await, Some(Outcome::Processed));
    assert_eq!(balance(&db.pool, "alice").await, START - 1500);
    assert_eq!(
        inbox.receive(cancelled.clone()).await,
        Some(Outcome::Processed)
    );
    assert_eq!(balance(&db.pool, "alice").await, START);
    assert_eq!(payment(&db.pool, id).await.as_deref(), Some("REFUNDED"));
    assert_eq!(refunds(&db.pool, id).await, [(1500, "alice".into())]);

    assert_eq!(
        inbox.receive(cancelled.clone()).await,
        Some(Outcome::Duplicate)
    );
    let mut again = cancelled;
    again.message_id = Some(Uuid::now_v7().to_string());
    assert_eq!(inbox.receive(again).await, Some(Outcome::Processed));
    assert_eq!(balance(&db.pool, "alice").await, START);
    assert_eq!(refunds(&db.pool, id).await.len(), 1);

    let replies = replies(&db.pool, id).await;
    assert_eq!(types(&replies), ["PaymentCompleted", "PaymentRefunded"]);
    let payment_id: Uuid = sqlx::query_scalar("SELECT id FROM payments WHERE order_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        replies[1].1,
        json!({ "order_id": id, "payment_id": payment_id, "amount_cents": 1500 })
    );
}

/// The cancellation overtakes the order: a tombstone and `PaymentCancelled`; the
/// OrderCreated that comes after (and a copy of it under another id) charges nothing and
/// answers nothing.
#[tokio::test]
async fn a_cancellation_before_the_order_leaves_a_tombstone_and_the_order_is_never_charged() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = inbox(&db);
    let (id, created, cancelled) = order("bob", 700);

    assert_eq!(inbox.receive(cancelled).await, Some(Outcome::Processed));
    assert_eq!(payment(&db.pool, id).await.as_deref(), Some("CANCELLED"));
    assert_eq!(
        inbox.receive(created.clone()).await,
        Some(Outcome::Processed)
    );
    let mut copy = created;
    copy.message_id = Some(Uuid::now_v7().to_string());
    assert_eq!(inbox.receive(copy).await, Some(Outcome::Processed));

    assert_eq!(balance(&db.pool, "bob").await, START);
    assert_eq!(payment(&db.pool, id).await.as_deref(), Some("CANCELLED"));
    assert!(refunds(&db.pool, id).await.is_empty());
    let replies = replies(&db.pool, id).await;
    assert_eq!(types(&replies), ["PaymentCancelled"]);
    assert_eq!(replies[0].1, json!({ "order_id": id }));
}

/// Each payment state against a cancellation, set up directly in the table: only a
/// COMPLETED payment is refunded (the guard in SQL); every other row is left exactly as it
/// was, with no refund and no credit. A failed payment (nothing charged) and an unknown
/// user's order are answered `PaymentCancelled`; an order already undone, nothing.
#[tokio::test]
async fn only_a_completed_payment_is_refunded_and_other_payments_are_left_untouched() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = inbox(&db);
    let mut cases = Vec::new();
    for (status, user, answer) in [
        ("COMPLETED", "alice", Some("PaymentRefunded")),
        ("FAILED", "carol", Some("PaymentCancelled")),
        ("CANCELLED", "alice", None),
        ("REFUNDED", "alice", None),
    ] {
        let (id, _, cancelled) = order(user, 300);
        sqlx::query(
            "INSERT INTO payments (id, order_id, user_id, amount_cents, status, message_id)
             VALUES ($1, $2, $3, 300, $4, $5)",
        )
        .bind(Uuid::now_v7())
        .bind(id)
        .bind(user)
        .bind(status)
        .bind(Uuid::now_v7())
        .execute(&db.pool)
        .await
        .unwrap();
        cases.push((id, status, cancelled, answer));
    }
    let (ghost, _, ghost_cancelled) = order("nobody", 300);
    for (id, status, cancelled, answer) in cases {
        let before: String =
            sqlx::query_scalar("SELECT row_to_json(p)::text FROM payments p WHERE order_id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let alice = balance(&db.pool, "alice").await;
        assert_eq!(inbox.receive(cancelled).await, Some(Outcome::Processed));
        let after: String =
            sqlx::query_scalar("SELECT row_to_json(p)::text FROM payments p WHERE order_id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if status == "COMPLETED" {
            assert_eq!(payment(&db.pool, id).await.as_deref(), Some("REFUNDED"));
            assert_eq!(refunds(&db.pool, id).await.len(), 1);
            assert_eq!(balance(&db.pool, "alice").await, alice + 300);
        } else {
            assert_eq!(before, after, "{status}");
            assert!(refunds(&db.pool, id).await.is_empty(), "{status}");
            assert_eq!(balance(&db.pool, "alice").await, alice, "{status}");
        }
        let replies = replies(&db.pool, id).await;
        assert_eq!(
            types(&replies),
            answer.into_iter().collect::<Vec<_>>(),
            "{status}"
        );
    }
    assert_eq!(balance(&db.pool, "carol").await, 0);
    assert_eq!(
        inbox.receive(ghost_cancelled).await,
        Some(Outcome::Processed)
    );
    assert_eq!(payment(&db.pool, ghost).await.as_deref(), Some("CANCELLED"));
    assert_eq!(types(&replies(&db.pool, ghost).await), ["PaymentCancelled"]);
}

/// Cancellations pay cannot act on are dead at once, with no effect: a payload without
/// its fields, an amount that is not positive, and one naming another account than the
/// one the order was paid from (nothing is credited to either).
#[tokio::test]
async fn a_cancellation_pay_cannot_act_on_is_dead_with_no_effect() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = inbox(&db);
    let (id, created, _) = order("alice", 900);
    assert_eq!(inbox.receive(created).await, Some(Outcome::Processed));
    for body in [
        json!({ "order_id": id }),
        json!({ "order_id": id, "user_id": "alice", "amount_cents": 0 }),
        json!({ "order_id": id, "user_id": "bob", "amount_cents": 900 }),
    ] {
        let outcome = inbox.receive(message("OrderCancelled", body.clone())).await;
        assert!(
            matches!(outcome, Some(Outcome::Dead { .. })),
            "{body}: {outcome:?}"
        );
    }
    assert_eq!(payment(&db.pool, id).await.as_deref(), Some("COMPLETED"));
    assert!(refunds(&db.pool, id).await.is_empty());
    assert_eq!(balance(&db.pool, "alice").await, START - 900);
    assert_eq!(balance(&db.pool, "bob").await, START);
}

/// An order and its cancellation handled at the same moment, by two transactions, many
/// times over: whichever goes first, no charge survives. Each order ends either charged
/// and refunded or never charged, with one answer saying which, and the balance is back.
#[tokio::test]
async fn an_order_and_its_cancellation_handled_concurrently_leave_no_charge() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = inbox(&db);
    let orders: Vec<_> = (0..24).map(|_| order("alice", 100)).collect();
    let runs = orders.iter().map(|(_, created, cancelled)| {
        let inbox = &inbox;
        async move {
            let (a, b) = tokio::join!(
                inbox.receive(created.clone()),
                inbox.receive(cancelled.clone())
            );
            assert_eq!((a, b), (Some(Outcome::Processed), Some(Outcome::Processed)));
        }
    });
    futures::future::join_all(runs).await;

    assert_eq!(balance(&db.pool, "alice").await, START);
    for (id, _, _) in &orders {
        let status = payment(&db.pool, *id).await.unwrap();
        let answers = replies(&db.pool, *id).await;
        let expected: &[&str] = match status.as_str() {
            "REFUNDED" => &["PaymentCompleted", "PaymentRefunded"],
            "CANCELLED" => &["PaymentCancelled"],
            other => panic!("order {id} ended with a {other} payment"),
        };
        assert_eq!(types(&answers), expected, "{id}");
        assert_eq!(
            refunds(&db.pool, *id).await.len(),
            usize::from(status == "REFUNDED")
        );
    }
}

/// Everything a run left behind, comparable between two databases: each order's payment,
/// refunds, balances and the replies (without their fresh ids).
async fn state(pool: &PgPool, orders: &[Uuid]) -> Vec<String> {
    let mut out = Vec::new();
    for id in orders {
        out.push(format!(
            "{id}: {:?} {:?}",
            payment(pool, *id).await,
            refunds(pool, *id).await
        ));
        let mut answers: Vec<String> = replies(pool, *id)
            .await
            .into_iter()
            .map(|(t, p)| format!("{t} {} {}", p["amount_cents"], p["reason"]))
            .collect();
        answers.sort();
        out.extend(answers);
    }
    for user in ["alice", "bob", "carol", "dave"] {
        out.push(format!("{user}: {}", balance(pool, user).await));
    }
    out
}

/// A batch mixing orders and cancellations does what its messages do one by one (in the
/// inbox's order). Of different accounts, in one transaction: an order paid, another
/// failed, a cancellation before its order (a tombstone). Then, with an account that has
/// both a payment and a cancellation (an order and its cancellation: charged, then
/// refunded), one at a time: the paid order refunded, the failed one cancelled, the order
/// after its tombstone never charged. Two copies of a cancellation: one effect.
#[tokio::test]
async fn a_batch_of_orders_and_cancellations_does_what_they_do_one_by_one() {
    let batched = TestDb::new(&pay::MIGRATOR).await;
    let one_by_one = TestDb::new(&pay::MIGRATOR).await;
    for db in [&batched, &one_by_one] {
        sqlx::query("INSERT INTO accounts (user_id, balance_cents) VALUES ('dave', 1000)")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let (paid, paid_created, paid_cancelled) = order("alice", 500);
    let (same, same_created, same_cancelled) = order("bob", 700);
    let (early, early_created, early_cancelled) = order("dave", 200);
    let (poor, poor_created, poor_cancelled) = order("carol", 100);
    let mut twice = paid_cancelled.clone();
    twice.message_id = Some(Uuid::now_v7().to_string());
    let batches = vec![
        vec![paid_created, poor_created, early_cancelled],
        vec![
            paid_cancelled,
            same_created,
            same_cancelled,
            poor_cancelled,
            early_created,
        ],
        vec![twice.clone(), twice],
    ];

    let inbox_b = inbox(&batched);
    let mut batch_outcomes = Vec::new();
    for (i, batch) in batches.clone().into_iter().enumerate() {
        batch_outcomes.extend(inbox_b.receive_batch(batch).await);
        if i == 0 {
            // Distinct accounts: the batch was one transaction.
            let writers: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT xmin::text) FROM payments WHERE order_id = ANY($1)",
            )
            .bind([paid, poor, early])
            .fetch_one(&batched.pool)
            .await
            .unwrap();
            assert_eq!(writers, 1);
        }
    }
    let mut cfg = test_kit::fast_inbox();
    cfg.batch_size = 1;
    let inbox_1 = Inbox::new(one_by_one.pool.clone(), handler(), cfg);
    let mut single_outcomes = Vec::new();
    for batch in batches {
        // One by one in the order the inbox hands a batch to the handler: by account, then
        // message id.
        let mut msgs = batch;
        msgs.sort_by_key(|m| {
            let body: Value = serde_json::from_slice(&m.body).unwrap();
            (
                body["user_id"].as_str().unwrap().to_string(),
                m.message_id.clone(),
            )
        });
        for msg in msgs {
            single_outcomes.push(inbox_1.receive(msg).await);
        }
    }
    let sorted = |mut o: Vec<Option<Outcome>>| {
        o.sort_by_key(|o| format!("{o:?}"));
        o
    };
    assert_eq!(sorted(batch_outcomes), sorted(single_outcomes));
    let orders = [paid, same, early, poor];
    assert_eq!(
        state(&batched.pool, &orders).await,
        state(&one_by_one.pool, &orders).await
    );
    // And what both did, spelled out.
    let ended: Vec<Option<String>> =
        futures::future::join_all(orders.iter().map(|id| payment(&batched.pool, *id))).await;
    assert_eq!(
        ended,
        [
            Some("REFUNDED"),
            Some("REFUNDED"),
            Some("CANCELLED"),
            Some("FAILED")
        ]
        .map(|s| s.map(str::to_string))
    );
    for (user, start) in [("alice", START), ("bob", START), ("dave", 1000)] {
        assert_eq!(balance(&batched.pool, user).await, start, "{user}");
    }
}

/// `msg` numbered `seq` among its order's messages, as order's relay sends it.
fn numbered(mut msg: Incoming, order_id: Uuid, seq: i64) -> Incoming {
    msg.headers = json!({ "aggregate_id": order_id.to_string(), "x-aggregate-seq": seq });
    msg
}

/// The numbers of pay's replies about `order_id`, oldest first.
async fn reply_numbers(pool: &PgPool, order_id: Uuid) -> Vec<(String, Option<i64>)> {
    sqlx::query_as(
        "SELECT event_type, aggregate_seq FROM outbox WHERE aggregate_id = $1 ORDER BY id",
    )
    .bind(order_id.to_string())
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Numbered by order, the cancellation that arrives first waits for the order it cancels:
/// parked, then applied right after it, so the charge is made and refunded (no tombstone).
/// Pay numbers its answers about the order 1 and 2, in the order it wrote them; and the
/// tombstone, when there is one, is pay's first answer.
#[tokio::test]
async fn numbered_messages_are_applied_in_order_and_pays_answers_are_numbered_in_turn() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = inbox(&db);
    let (id, created, cancelled) = order("alice", 900);

    assert_eq!(
        inbox.receive(numbered(cancelled, id, 2)).await,
        Some(Outcome::Parked)
    );
    assert_eq!(payment(&db.pool, id).await, None);
    assert_eq!(
        inbox.receive(numbered(created, id, 1)).await,
        Some(Outcome::Processed)
    );
    assert_eq!(payment(&db.pool, id).await.as_deref(), Some("REFUNDED"));
    assert_eq!(balance(&db.pool, "alice").await, START);
    assert_eq!(
        reply_numbers(&db.pool, id).await,
        [
            ("PaymentCompleted".to_string(), Some(1)),
            ("PaymentRefunded".to_string(), Some(2))
        ]
    );

    // Unnumbered (as before ordering), the cancellation first leaves a tombstone: answer 1.
    let (id, _, cancelled) = order("alice", 300);
    assert_eq!(inbox.receive(cancelled).await, Some(Outcome::Processed));
    assert_eq!(
        reply_numbers(&db.pool, id).await,
        [("PaymentCancelled".to_string(), Some(1))]
    );
}
