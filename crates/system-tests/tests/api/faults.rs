//! The teaching fault switches (`DEMO_FAULTS=1`, `/admin/faults`): each one shows its
//! failure, and the mechanism recovers from it without losing or doubling anything.

use std::time::Duration;

use message_table::{InboxStatus, OutboxStatus};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use system_tests::System;
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(20);
const START: i64 = 100_000_000;

/// A request to `base/admin/faults[/switch]` with the admin token; its status and body.
async fn fault(
    sys: &System,
    base: &str,
    method: Method,
    switch: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = match switch {
        Some(s) => format!("{base}/admin/faults/{s}"),
        None => format!("{base}/admin/faults"),
    };
    let mut request = sys
        .http
        .request(method, url)
        .header("authorization", test_kit::admin_bearer());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let res = request.send().await.unwrap();
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

async fn turn_on(sys: &System, base: &str, switch: &str, body: Value) {
    let (status, state) = fault(sys, base, Method::POST, Some(switch), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["switch"], switch);
    assert_eq!(state["active"], true, "{state}");
}

async fn turn_off(sys: &System, base: &str, switch: &str) {
    let (status, state) = fault(sys, base, Method::DELETE, Some(switch), None).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["active"], false, "{state}");
}

/// The listed state of one switch.
async fn state(sys: &System, base: &str, switch: &str) -> Value {
    let (status, list) = fault(sys, base, Method::GET, None, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["switches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["switch"] == switch)
        .cloned()
        .unwrap_or_else(|| panic!("{switch} not listed: {list}"))
}

async fn scalar(pool: &sqlx::PgPool, sql: &'static str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn payments(sys: &System, order_id: Uuid) -> i64 {
    scalar(
        &sys.pay_db.pool,
        "SELECT count(*) FROM payments WHERE order_id = $1",
        order_id,
    )
    .await
}

/// The status and attempts of the OrderCreated row of `order_id` in order's outbox.
async fn order_message(sys: &System, order_id: Uuid) -> (OutboxStatus, i32) {
    sqlx::query_as("SELECT status, attempts FROM outbox WHERE aggregate_id = $1")
        .bind(order_id.to_string())
        .fetch_one(&sys.order_db.pool)
        .await
        .unwrap()
}

async fn paid_once(sys: &System, order_id: Uuid, amount: i64) {
    let order = sys.settled(order_id, SETTLE).await;
    assert_eq!(order["status"], "PAID", "{order}");
    assert_eq!(payments(sys, order_id).await, 1);
    let (_, account) = sys.get("/pay/accounts/alice").await;
    assert_eq!(account["balance_cents"], START - amount);
}

fn duplicates(sys: &System) -> u64 {
    sys.pay_counters.snapshot().duplicates
}

#[tokio::test]
async fn without_demo_faults_the_fault_routes_are_unknown() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start(&amqp, &amqp).await;
    for base in [&sys.order, &sys.pay] {
        for (method, switch, body) in [
            (Method::GET, None, None),
            (
                Method::POST,
                Some("fail_handler"),
                Some(json!({"count": 1})),
            ),
            (Method::DELETE, Some("fail_handler"), None),
        ] {
            let (status, body) = fault(&sys, base, method, switch, body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
            assert_eq!(body["error"]["code"], "not_found", "{body}");
        }
        // Nor does the document name them.
        let doc = openapi_paths(&sys, base).await;
        assert!(
            !doc.iter().any(|p| p.starts_with("/admin/faults")),
            "{doc:?}"
        );
    }
}

/// The paths `base/openapi.json` documents.
async fn openapi_paths(sys: &System, base: &str) -> Vec<String> {
    let doc: Value = sys
        .http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["paths"].as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn every_switch_is_listed_with_its_scenario_and_bad_input_is_refused() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start_with_faults(&amqp).await;
    let scenarios =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/scenarios");
    for base in [&sys.order, &sys.pay] {
        let doc = openapi_paths(&sys, base).await;
        for path in ["/admin/faults", "/admin/faults/{switch}"] {
            assert!(doc.iter().any(|p| p == path), "{path} not in {doc:?}");
        }
        let (status, list) = fault(&sys, base, Method::GET, None, None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let names: Vec<_> = list["switches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["switch"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "pause_relay",
                "fail_handler",
                "lose_confirms",
                "drop_broker_connection",
                "stop_consumer",
                "deliver_twice",
                "hold_ack"
            ]
        );
        for s in list["switches"].as_array().unwrap() {
            assert_eq!(s["active"], false, "{s}");
            let script = scenarios.join(format!("{}.sh", s["scenario"].as_str().unwrap()));
            assert!(script.is_file(), "{s}: no {}", script.display());
        }
    }
    // Behind the admin token like every admin route.
    let res = sys
        .http
        .get(format!("{}/admin/faults", sys.pay))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let pay = &sys.pay;
    for (switch, body, want, code) in [
        ("no_such_switch", json!({"count": 1}), 404, "not_found"),
        (
            "fail_handler",
            json!({"seconds": 5}),
            422,
            "validation_failed",
        ),
        (
            "fail_handler",
            json!({"count": 0}),
            422,
            "validation_failed",
        ),
        (
            "fail_handler",
            json!({"count": 1001}),
            422,
            "validation_failed",
        ),
        (
            "fail_handler",
            json!({"count": 1, "seconds": 1}),
            422,
            "validation_failed",
        ),
        ("fail_handler", json!({"count": -1}), 422, "invalid_body"),
        ("fail_handler", json!({"count": "two"}), 422, "invalid_body"),
        ("fail_handler", json!({"times": 2}), 422, "invalid_body"),
        ("pause_relay", json!({}), 422, "validation_failed"),
        (
            "pause_relay",
            json!({"seconds": 3601}),
            422,
            "validation_failed",
        ),
        (
            "drop_broker_connection",
            json!({"count": 1}),
            422,
            "validation_failed",
        ),
    ] {
        let (status, err) = fault(&sys, pay, Method::POST, Some(switch), Some(body.clone())).await;
        assert_eq!(status.as_u16(), want, "{switch} {body}: {err}");
        assert_eq!(err["error"]["code"], code, "{switch} {body}: {err}");
        assert!(err["error"]["message"].is_string(), "{err}");
    }
    let res = sys
        .http
        .post(format!("{pay}/admin/faults/fail_handler"))
        .header("authorization", test_kit::admin_bearer())
        .header("content-type", "application/json")
        .body("{\"count\":")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let (status, _) = fault(&sys, pay, Method::DELETE, Some("no_such_switch"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing refused was switched on.
    for s in ["fail_handler", "pause_relay", "drop_broker_connection"] {
        assert_eq!(state(&sys, pay, s).await["active"], false);
    }

    turn_on(&sys, pay, "fail_handler", json!({"count": 3})).await;
    let listed = state(&sys, pay, "fail_handler").await;
    assert_eq!(listed["remaining_count"], 3, "{listed}");
    assert_eq!(listed["unit"], "count");
    turn_off(&sys, pay, "fail_handler").await;

    // A timed switch ends by itself.
    turn_on(&sys, pay, "stop_consumer", json!({"seconds": 1})).await;
    test_kit::eventually("stop_consumer ends by itself", SETTLE, || async {
        let s = state(&sys, pay, "stop_consumer").await;
        (s["active"] == false).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_paused_relay_leaves_committed_orders_pending_until_it_resumes() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start_with_faults(&amqp).await;
    turn_on(&sys, &sys.order, "pause_relay", json!({"seconds": 600})).await;
    let order_id = sys.buy("alice", 700).await;

    // Many relay polls later, the committed message is still waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        order_message(&sys, order_id).await,
        (OutboxStatus::Pending, 0)
    );
    let (_, order) = sys.get(&format!("/order/orders/{order_id}")).await;
    assert_eq!(order["status"], "PENDING_PAYMENT");
    assert_eq!(payments(&sys, order_id).await, 0);
    let left = state(&sys, &sys.order, "pause_relay").await;
    assert!(left["remaining_seconds"].as_u64().unwrap() > 0, "{left}");

    turn_off(&sys, &sys.order, "pause_relay").await;
    paid_once(&sys, order_id, 700).await;
    assert_eq!(order_message(&sys, order_id).await, (OutboxStatus::Sent, 1));
}

#[tokio::test]
async fn a_failing_handler_is_retried_and_the_order_paid_once() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start_with_faults(&amqp).await;
    turn_on(&sys, &sys.pay, "fail_handler", json!({"count": 2})).await;
    let order_id = sys.buy("alice", 900).await;

    paid_once(&sys, order_id, 900).await;
    // Two failed runs (rolled back: one payment, one debit), then the sweeper's success.
    let message_id = order_message_id(&sys, order_id).await;
    let (status, attempts): (InboxStatus, i32) =
        sqlx::query_as("SELECT status, attempts FROM inbox WHERE message_id = $1")
            .bind(message_id)
            .fetch_one(&sys.pay_db.pool)
            .await
            .unwrap();
    assert_eq!((status, attempts), (InboxStatus::Processed, 3));
    assert_eq!(sys.pay_counters.snapshot().failed, 2);
    assert_eq!(state(&sys, &sys.pay, "fail_handler").await["active"], false);
}

async fn order_message_id(sys: &System, order_id: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT message_id FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&sys.order_db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lost_confirm_is_published_again_and_pays_once() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start_with_faults(&amqp).await;
    turn_on(&sys, &sys.order, "lose_confirms", json!({"count": 1})).await;
    let order_id = sys.buy("alice", 1100).await;

    paid_once(&sys, order_id, 1100).await;
    // The first copy was delivered (the order may be paid already) but its confirm ignored:
    // the row stayed pending and was published again, then sent.
    test_kit::eventually("the row is published again and sent", SETTLE, || async {
        (order_message(&sys, order_id).await == (OutboxStatus::Sent, 2)).then_some(())
    })
    .await;
    test_kit::eventually("pay's inbox drops the copy", SETTLE, || async {
        (duplicates(&sys) == 1).then_some(())
    })
    .await;
    assert_eq!(payments(&sys, order_id).await, 1);
}

#[tokio::test]
async fn a_message_delivered_twice_pays_once() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start_with_faults(&amqp).await;
    turn_on(&sys, &sys.order, "deliver_twice", json!({"count": 1})).await;
    let order_id = sys.buy("alice", 1300).await;

    paid_once(&sys, order_id, 1300).await;
    test_kit::eventually("pay's inbox drops the copy", SETTLE, || async {
        (duplicates(&sys) == 1).then_some(())
    })
    .await;
    assert_eq!(payments(&sys, order_id).await, 1);
    // The outbox published it once as far as it knows; the copy was the fault's.
    assert_eq!(order_message(&sys, order_id).await, (OutboxStatus::Sent, 1));
}

#[tokio::test]
async fn dropped_broker_connections_are_replaced() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start_with_faults(&amqp).await;
    for base in [&sys.order, &sys.pay] {
        turn_on(&sys, base, "drop_broker_connection", json!({})).await;
    }
    // Active until both the relay and the consumer of each service have dropped theirs.
    for base in [&sys.order, &sys.pay] {
        test_kit::eventually("both connections dropped", SETTLE, || async {
            let s = state(&sys, base, "drop_broker_connection").await;
            (s["active"] == false).then_some(())
        })
        .await;
    }
    let order_id = sys.buy("alice", 1500).await;
    paid_once(&sys, order_id, 1500).await;
    for base in [&sys.order, &sys.pay] {
        let res = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_stopped_consumer_takes_no_delivery_until_it_resumes() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start_with_faults(&amqp).await;
    turn_on(&sys, &sys.pay, "stop_consumer", json!({"seconds": 600})).await;
    let order_id = sys.buy("alice", 1700).await;

    // Published and confirmed: the message is the broker's, waiting for pay.
    test_kit::eventually("the order's message is sent", SETTLE, || async {
        (order_message(&sys, order_id).await.0 == OutboxStatus::Sent).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&sys.pay_db.pool)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    let (_, order) = sys.get(&format!("/order/orders/{order_id}")).await;
    assert_eq!(order["status"], "PENDING_PAYMENT");

    turn_off(&sys, &sys.pay, "stop_consumer").await;
    paid_once(&sys, order_id, 1700).await;
}
