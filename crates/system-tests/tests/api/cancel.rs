//! Cancelling an order end to end, through the gateway: order → OrderCancelled → pay's
//! inbox → refund or tombstone → pay's answer → order's inbox.

use std::time::Duration;

use message_table::outbox;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

const START: i64 = 100_000_000;
const SETTLE: Duration = Duration::from_secs(20);

/// `POST /order/orders/{id}/cancel` through the gateway: the status and the body.
async fn cancel(sys: &system_tests::System, id: Uuid, key: &str) -> (StatusCode, Value) {
    let res = sys
        .http
        .post(format!("{}/order/orders/{id}/cancel", sys.gateway))
        .header("Idempotency-Key", key)
        .send()
        .await
        .expect("POST /order/orders/{id}/cancel");
    (res.status(), res.json().await.unwrap())
}

/// Waits until the order has `status`.
async fn reaches(sys: &system_tests::System, id: Uuid, status: &str) -> Value {
    test_kit::eventually(&format!("order {id} is {status}"), SETTLE, || async {
        let (_, order) = sys.get(&format!("/order/orders/{id}")).await;
        (order["status"] == status).then_some(order)
    })
    .await
}

/// Bought, paid, cancelled: pay refunds it, the order ends REFUNDED and the balance is
/// where it was before the order. Each side's outbox sent its two messages.
#[tokio::test]
async fn a_paid_order_cancelled_is_refunded_and_the_balance_is_back() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start(&amqp, &amqp).await;

    let id = sys.buy("alice", 1299).await;
    assert_eq!(sys.settled(id, SETTLE).await["status"], "PAID");
    let (_, account) = sys.get("/pay/accounts/alice").await;
    assert_eq!(account["balance_cents"], START - 1299);

    let (code, order) = cancel(&sys, id, "undo-1").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{order}");
    assert_eq!(order["status"], "CANCEL_REQUESTED");
    reaches(&sys, id, "REFUNDED").await;

    let (_, account) = sys.get("/pay/accounts/alice").await;
    assert_eq!(account["balance_cents"], START);
    let (_, payment) = sys.get(&format!("/pay/payments/{id}")).await;
    assert_eq!(payment["status"], "REFUNDED");
    // The retried cancel gets its first answer; the order as it is now.
    let (code, again) = cancel(&sys, id, "undo-1").await;
    assert_eq!(
        (code, again["status"].as_str()),
        (StatusCode::ACCEPTED, Some("REFUNDED"))
    );
    for pool in [&sys.order_db.pool, &sys.pay_db.pool] {
        test_kit::eventually("outbox drained", SETTLE, || async {
            let s = outbox::stats(pool).await.unwrap();
            (s.pending == 0 && s.in_flight == 0 && s.dead == 0 && s.sent == 2).then_some(())
        })
        .await;
    }

    // The dashboard's story of it: each side's rows about the cancellation.
    let ours = story(&format!("{}/admin/orders/{id}/story", sys.order)).await;
    assert_eq!(ours["order_cancelled"]["event_type"], "OrderCancelled");
    assert_eq!(ours["order_cancelled"]["status"], "sent", "{ours}");
    let answers: Vec<_> = ours["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_type"].clone())
        .collect();
    assert_eq!(answers, ["PaymentCompleted", "PaymentRefunded"], "{ours}");
    let theirs = story(&format!("{}/admin/payments/{id}/story", sys.pay)).await;
    assert_eq!(
        theirs["order_cancelled"][0]["status"], "processed",
        "{theirs}"
    );
    assert_eq!(theirs["payment"]["status"], "REFUNDED");
    assert_eq!(theirs["refund"]["amount_cents"], 1299);
    assert_eq!(
        theirs["refund"]["message_id"],
        theirs["order_cancelled"][0]["message_id"]
    );
}

/// A service's story of one order, read with the operator's token.
async fn story(url: &str) -> Value {
    let res = reqwest::Client::new()
        .get(url)
        .header("authorization", test_kit::admin_bearer())
        .send()
        .await
        .expect("GET story");
    assert_eq!(res.status(), StatusCode::OK, "{url}");
    res.json().await.unwrap()
}

/// Cancelled before pay saw the order: order's relay holds every OrderCreated back (a
/// trigger puts its first attempt an hour away), so the OrderCancelled reaches pay first.
/// Pay leaves a tombstone and answers PaymentCancelled; the order is CANCELLED. Then the
/// OrderCreated is let go: pay handles it and charges nothing.
///
/// Numbered per order, the OrderCancelled would wait for its OrderCreated (the relay never
/// overtakes within an order); the trigger also drops the numbers, as a sender that does
/// not number its messages (an order of before the ordering, mid-deploy) writes them, so
/// pay's own defence, the tombstone, is what is shown here.
#[tokio::test]
async fn an_order_cancelled_before_pay_sees_it_is_never_charged() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start(&amqp, &amqp).await;
    sqlx::raw_sql(
        "CREATE FUNCTION hold_order_created() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             NEW.aggregate_seq := NULL;
             IF NEW.event_type = 'OrderCreated' THEN
                 NEW.next_attempt_at := now() + interval '1 hour';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER hold_order_created BEFORE INSERT ON outbox
         FOR EACH ROW EXECUTE FUNCTION hold_order_created();",
    )
    .execute(&sys.order_db.pool)
    .await
    .unwrap();

    let id = sys.buy("bob", 2500).await;
    let (code, order) = cancel(&sys, id, "undo-early").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{order}");
    assert_eq!(order["status"], "CANCELLED");

    // Pay's answer comes back and is processed; the order stays CANCELLED.
    test_kit::eventually("PaymentCancelled processed by order", SETTLE, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE event_type = 'PaymentCancelled' AND status = 'processed'",
        )
        .fetch_one(&sys.order_db.pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(reaches(&sys, id, "CANCELLED").await["status"], "CANCELLED");
    let (_, payment) = sys.get(&format!("/pay/payments/{id}")).await;
    assert_eq!(payment["status"], "CANCELLED");

    // Now the OrderCreated goes out; pay takes it and charges nothing.
    sqlx::query("UPDATE outbox SET next_attempt_at = now() WHERE event_type = 'OrderCreated'")
        .execute(&sys.order_db.pool)
        .await
        .unwrap();
    test_kit::eventually("OrderCreated processed by pay", SETTLE, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE event_type = 'OrderCreated' AND status = 'processed'",
        )
        .fetch_one(&sys.pay_db.pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    let (_, account) = sys.get("/pay/accounts/bob").await;
    assert_eq!(account["balance_cents"], START);
    let (_, payment) = sys.get(&format!("/pay/payments/{id}")).await;
    assert_eq!(payment["status"], "CANCELLED");
    let (_, order) = sys.get(&format!("/order/orders/{id}")).await;
    assert_eq!(order["status"], "CANCELLED");
    // Pay answered once (PaymentCancelled), nothing for the OrderCreated.
    test_kit::eventually("pay's outbox drained", SETTLE, || async {
        let s = outbox::stats(&sys.pay_db.pool).await.unwrap();
        (s.pending == 0 && s.in_flight == 0 && s.sent == 1).then_some(())
    })
    .await;
}
