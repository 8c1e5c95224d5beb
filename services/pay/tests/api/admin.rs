//! The operator's `/admin` endpoints (crates/service-kit/src/admin.rs) on a running pay
//! service: behind the admin token; dead messages are visible with their reasons, can be
//! listed page by page, put back in line and purged.

use crate::support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::order_created_props as props;
use test_kit::TestQueue;
use uuid::Uuid;

use support::admin_call as send;

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    send(reqwest::Client::new().get(format!("{base}{path}"))).await
}

async fn post(base: &str, path: &str) -> (StatusCode, Value) {
    send(reqwest::Client::new().post(format!("{base}{path}"))).await
}

#[tokio::test]
async fn dead_messages_are_listed_with_their_reasons_and_can_be_requeued() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    let publisher = TestQueue::bind(&amqp, &[]).await;
    let base = pay.base.as_str();

    // Poison: not JSON. A payload the handler cannot use: dead at once. A valid order whose
    // answer nobody can receive yet (no queue bound for payment.*): the reply goes dead.
    let poison = Uuid::now_v7().to_string();
    let unusable = Uuid::now_v7().to_string();
    publisher
        .publish(&amqp, "order.created", props(&poison), b"{oops")
        .await;
    publisher
        .publish(
            &amqp,
            "order.created",
            props(&unusable),
            br#"{"order_id":"nope"}"#,
        )
        .await;
    let order_id = Uuid::now_v7();
    let order =
        json!({"order_id": order_id, "user_id": "alice", "item": "book", "amount_cents": 700});
    publisher
        .publish(
            &amqp,
            "order.created",
            props(&Uuid::now_v7().to_string()),
            &serde_json::to_vec(&order).unwrap(),
        )
        .await;

    let stats = test_kit::eventually(
        "the dead rows are there",
        Duration::from_secs(20),
        || async {
            let (_, stats) = get(base, "/admin/stats").await;
            (stats["outbox"]["dead"] == 1 && stats["inbox"]["dead"] == 2).then_some(stats)
        },
    )
    .await;
    assert_eq!(stats["inbox"]["processed"], 1, "{stats}");
    assert_eq!(stats["inbox_since_start"]["poison"], 1, "{stats}");

    let (status, dead) = get(base, "/admin/outbox/dead").await;
    assert_eq!(status, StatusCode::OK);
    let reply = &dead["dead"][0];
    assert_eq!(reply["event_type"], "PaymentCompleted", "{dead}");
    assert_eq!(reply["aggregate_id"], order_id.to_string());
    assert!(
        reply["last_error"].as_str().unwrap().contains("unroutable"),
        "{dead}"
    );

    let (_, dead_in) = get(base, "/admin/inbox/dead").await;
    let rows = dead_in["dead"].as_array().unwrap();
    let find = |id: &str| rows.iter().find(|r| r["message_id"] == id).unwrap();
    assert_eq!(find(&poison)["requeueable"], false);
    assert!(
        find(&poison)["last_error"]
            .as_str()
            .unwrap()
            .starts_with("poison message")
    );
    assert_eq!(find(&unusable)["requeueable"], true);

    // Poison cannot be run again; an unknown id is a 404; a bad id a 400.
    let (status, body) = post(base, &format!("/admin/inbox/{poison}/requeue")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_requeueable"))
    );
    let (status, body) = post(base, &format!("/admin/outbox/{}/requeue", Uuid::now_v7())).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = post(base, "/admin/outbox/not-a-uuid/requeue").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_path"))
    );

    // The cause is fixed (order's queue exists now): the requeued answer is delivered, once.
    let answers = TestQueue::bind(&amqp, &["payment.completed"]).await;
    let id = reply["id"].as_str().unwrap();
    let (status, _) = post(base, &format!("/admin/outbox/{id}/requeue")).await;
    assert_eq!(status, StatusCode::OK);
    let taken = answers
        .take_until("the requeued answer", Duration::from_secs(20), |t| {
            !t.is_empty()
        })
        .await;
    let body: Value = serde_json::from_slice(&taken[0].data).unwrap();
    assert_eq!(body["order_id"], order_id.to_string());
    let (status, _) = post(base, &format!("/admin/outbox/{id}/requeue")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "it is no longer dead");
}
