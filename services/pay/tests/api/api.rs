//! Pay's read API: payments and balances, and its errors.

use crate::support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_kit::TestQueue;
use uuid::Uuid;

#[tokio::test]
async fn reads_and_their_errors() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    let base = pay.base.clone();
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let res = reqwest::get(&url).await.unwrap();

            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };

    let (status, alice) = get("/accounts/alice".into()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(alice["balance_cents"], 100_000_000);
    for (path, status, code) in [
        (
            "/accounts/nobody".to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/payments/{}", Uuid::now_v7()),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/payments/not-a-uuid".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "/nothing/here".to_string(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let (got, body) = get(path.clone()).await;
        assert_eq!(got, status, "{path}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
}

#[tokio::test]
async fn a_lookup_answers_each_order_and_refuses_bad_input() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    let (paid, unseen) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO payments (id, order_id, user_id, amount_cents, status, failure_reason, message_id)
         VALUES ($1, $2, 'carol', 500, 'FAILED', 'insufficient_funds', $3)",
    )
    .bind(Uuid::now_v7())
    .bind(paid)
    .bind(Uuid::now_v7())
    .execute(&pay.db.pool)
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let lookup = |body: Value| {
        let req = http
            .post(format!("{}/payments/lookup", pay.base))
            .json(&body);
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };

    let (status, body) = lookup(serde_json::json!({ "order_ids": [unseen, paid] })).await;
    assert_eq!(status, StatusCode::OK);
    let answers = body["payments"].as_array().unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0]["order_id"], unseen.to_string());
    assert_eq!(answers[0]["status"], "UNKNOWN");
    assert_eq!(answers[1]["status"], "FAILED");
    assert_eq!(answers[1]["failure_reason"], "insufficient_funds");
    assert_eq!(answers[1]["amount_cents"], 500);
    assert_eq!(answers[1]["user_id"], "carol");

    let too_many: Vec<Uuid> = (0..=pay::accounts::MAX_LOOKUP)
        .map(|_| Uuid::now_v7())
        .collect();
    for body in [
        serde_json::json!({ "order_ids": [] }),
        serde_json::json!({ "order_ids": too_many }),
        serde_json::json!({ "order_ids": ["not-a-uuid"] }),
        serde_json::json!({ "order_ids": [paid], "extra": 1 }),
        serde_json::json!({}),
    ] {
        let (status, answer) = lookup(body.clone()).await;
        assert!(status.is_client_error(), "{body}: {status}");
        assert!(answer["error"]["code"].is_string(), "{body}: {answer}");
    }
}

/// `GET /openapi.json` is an OpenAPI 3.1 document naming every route, admin ones included.
#[tokio::test]
async fn openapi_document_names_every_route() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    let res = reqwest::get(format!("{}/openapi.json", pay.base))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json().await.unwrap();
    let operations: Vec<(&str, &str)> = [
        ("/payments/{order_id}", "get"),
        ("/accounts/{user_id}", "get"),
        ("/payments/lookup", "post"),
        ("/admin/payments/{order_id}/story", "get"),
    ]
    .into_iter()
    .chain(test_kit::openapi::STANDARD)
    .chain(test_kit::openapi::MESSAGE_TABLE_ADMIN)
    .collect();
    test_kit::openapi::assert_documents(&doc, &operations);
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["Payment"]["properties"]["payment_id"].is_object());
    assert!(schemas["LookupResponse"]["properties"]["payments"].is_object());
}

/// `GET /admin/payments/{order_id}/story`: empty for an order pay never saw; once paid,
/// the inbox row of its `OrderCreated`, the payment and the reply's outbox row.
#[tokio::test]
async fn the_story_of_an_order_is_pays_rows_about_it() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    let story = |order_id: Uuid| {
        let url = format!("{}/admin/payments/{order_id}/story", pay.base);
        support::admin_call(reqwest::Client::new().get(url))
    };

    let (status, empty) = story(Uuid::now_v7()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        empty,
        json!({"order_created": [], "payment": null, "order_cancelled": [], "refund": null, "replies": []})
    );

    // Pay's answer is routed to a queue, so its relay can mark it sent.
    let _answers = TestQueue::bind(&amqp, &["payment.completed"]).await;
    let (order_id, message_id) = (Uuid::now_v7(), Uuid::now_v7());
    let body =
        json!({"order_id": order_id, "user_id": "alice", "item": "book", "amount_cents": 250});
    TestQueue::bind(&amqp, &[])
        .await
        .publish(
            &amqp,
            "order.created",
            support::order_created_props(&message_id.to_string()),
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    let told = test_kit::eventually("paid and answered", Duration::from_secs(20), || async {
        let (_, told) = story(order_id).await;
        // The story's three reads are not one snapshot: a read that straddles the commit
        // and the reply's publish sees the reply sent but not the rows before it.
        let whole = told["order_created"][0].is_object() && told["payment"].is_object();
        (whole && told["replies"][0]["status"] == "sent").then_some(told)
    })
    .await;
    let inbox = &told["order_created"][0];
    assert_eq!(inbox["message_id"], message_id.to_string(), "{told}");
    assert_eq!(
        (&inbox["status"], &inbox["attempts"]),
        (&json!("processed"), &json!(1))
    );
    assert_eq!(told["payment"]["status"], "COMPLETED", "{told}");
    assert_eq!(told["payment"]["message_id"], message_id.to_string());
    assert_eq!(told["replies"][0]["event_type"], "PaymentCompleted");
    assert!(told["replies"][0]["sent_at"].is_string(), "{told}");
    assert_eq!(
        (&told["order_cancelled"], &told["refund"]),
        (&json!([]), &Value::Null)
    );

    let (status, _) = support::admin_call(
        reqwest::Client::new().get(format!("{}/admin/payments/x/story", pay.base)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let res = reqwest::get(format!("{}/admin/payments/{order_id}/story", pay.base))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// A body declared over the limit gets 413 in the project's shape, every time. (That pay
/// reads such a body before answering, so a proxy sending it is not reset, shows only
/// through a proxy: `flows.rs::an_oversized_body_through_the_gateway_gets_the_services_413`.)
#[tokio::test]
async fn an_oversized_body_is_answered_413_in_the_error_shape() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    let ids: Vec<Uuid> = (0..50_000).map(|_| Uuid::new_v4()).collect();
    let body = serde_json::to_vec(&json!({ "order_ids": ids })).unwrap();
    assert!(body.len() > 1 << 20);
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let res = client
            .post(format!("{}/payments/lookup", pay.base))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("an answer");
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "body_too_large", "{answer}");
    }
}
