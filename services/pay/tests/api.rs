//! Pay's read API: payments and balances, and its errors.

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

#[tokio::test]
async fn reads_and_their_errors() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp, std::future::pending()).await;
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
    let pay = support::spawn_pay(&amqp, std::future::pending()).await;
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
    assert_eq!(answers[0]["status"], pay::accounts::UNKNOWN);
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
    let pay = support::spawn_pay(&amqp, std::future::pending()).await;
    let res = reqwest::get(format!("{}/openapi.json", pay.base))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json().await.unwrap();
    let operations: Vec<(&str, &str)> = [
        ("/payments/{order_id}", "get"),
        ("/accounts/{user_id}", "get"),
        ("/payments/lookup", "post"),
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
