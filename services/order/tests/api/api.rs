//! The order HTTP API against a real database (fresh per test) and broker.

use std::time::Duration;

use message_table::{OutboxStatus, outbox};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_kit::{TestDb, TestQueue};
use uuid::Uuid;

struct TestApp {
    base: String,
    db: TestDb,
    http: reqwest::Client,
}

async fn spawn_order(amqp: &message_table::amqp::AmqpConfig) -> TestApp {
    let db = TestDb::new(&order::MIGRATOR).await;
    let messaging = test_kit::messaging(amqp, "test.order", messages::ORDER_QUEUE.routing_keys);
    let app = test_kit::spawn_order(test_kit::service_config(&db.url, &messaging, 12)).await;
    TestApp {
        base: app.base,
        db,
        http: reqwest::Client::new(),
    }
}

impl TestApp {
    async fn buy(&self, body: Value, key: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(format!("{}/buy", self.base)).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.expect("POST /buy")
    }

    /// `GET path` on the service.
    async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.http.get(format!("{}{path}", self.base)).send().await
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

fn alice(amount: i64) -> Value {
    json!({"user_id": "alice", "item": "book", "amount_cents": amount})
}

#[tokio::test]
async fn buy_writes_the_order_and_its_message_and_the_relay_publishes_it() {
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &["order.created"]).await;
    let app = spawn_order(&amqp).await;

    let res = app.buy(alice(1299), None).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "PENDING_PAYMENT");
    let order_id: Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    let message_id = body["message_id"].as_str().unwrap().to_string();

    let order: Value = app
        .get(&format!("/orders/{order_id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["user_id"], "alice");
    assert_eq!(order["amount_cents"], 1299);
    assert_eq!(order["message_id"], message_id.as_str());

    // The relay delivers the OrderCreated message, with its id, type and payload.
    let delivered = test_kit::eventually(
        "OrderCreated in the queue",
        Duration::from_secs(10),
        || async {
            let got = queue.take_all().await;
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    assert_eq!(delivered.len(), 1);
    let d = &delivered[0];
    assert_eq!(
        d.properties.message_id().as_ref().unwrap().as_str(),
        message_id
    );
    assert_eq!(
        d.properties.kind().as_ref().unwrap().as_str(),
        "OrderCreated"
    );
    assert_eq!(d.properties.delivery_mode(), &Some(2));
    let payload: Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(payload["order_id"], order_id.to_string());
    assert_eq!(payload["amount_cents"], 1299);

    // Marked sent once the broker's confirm is back (the message may be gettable before).
    test_kit::eventually(
        "the outbox row is sent",
        Duration::from_secs(10),
        || async {
            let id = Uuid::parse_str(&message_id).unwrap();
            let status = outbox::status_of(&app.db.pool, id).await.ok()?;
            (status == Some(OutboxStatus::Sent)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_failed_outbox_insert_leaves_no_order_behind() {
    let amqp = test_kit::test_amqp();
    let app = spawn_order(&amqp).await;
    // Make the outbox insert fail inside the /buy transaction.
    sqlx::query("ALTER TABLE outbox ADD CONSTRAINT sabotage CHECK (event_type <> 'OrderCreated')")
        .execute(&app.db.pool)
        .await
        .unwrap();

    let res = app.buy(alice(500), None).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal_error");
    assert!(
        !body.to_string().contains("sabotage"),
        "internal details leaked: {body}"
    );
    assert_eq!(
        app.count("orders").await,
        0,
        "the order row must roll back with the outbox row"
    );
    assert_eq!(app.count("outbox").await, 0);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_order_and_one_message() {
    let amqp = test_kit::test_amqp();
    let app = spawn_order(&amqp).await;

    let first = app.buy(alice(700), Some("key-1")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = app.buy(alice(700), Some("key-1")).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["order_id"], first["order_id"]);
    assert_eq!(again["message_id"], first["message_id"]);

    let other_body = app.buy(alice(701), Some("key-1")).await;
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = other_body.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_key_reused");

    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_order() {
    let amqp = test_kit::test_amqp();
    let app = spawn_order(&amqp).await;
    let responses =
        futures::future::join_all((0..8).map(|_| app.buy(alice(900), Some("same-key")))).await;
    let mut order_ids = std::collections::HashSet::new();
    for res in responses {
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        order_ids.insert(body["order_id"].as_str().unwrap().to_string());
    }
    assert_eq!(order_ids.len(), 1, "all eight answers name the same order");
    assert_eq!(app.count("orders").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}

/// Every bad request gets the project's JSON error with the right status, and writes nothing.
#[tokio::test]
async fn bad_requests_are_refused_with_json_errors_and_write_nothing() {
    let amqp = test_kit::test_amqp();
    let app = spawn_order(&amqp).await;
    let long = "x".repeat(201);
    let json_ct = "application/json";
    let cases: Vec<(&str, &str, &str, String, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            "POST",
            json_ct,
            "{\"user_id\":".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "missing field",
            "POST",
            json_ct,
            r#"{"user_id":"alice","item":"book"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "extra field",
            "POST",
            json_ct,
            r#"{"user_id":"alice","item":"book","amount_cents":1,"admin":true}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "wrong type",
            "POST",
            json_ct,
            r#"{"user_id":"alice","item":"book","amount_cents":"12"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "fractional amount",
            "POST",
            json_ct,
            r#"{"user_id":"alice","item":"book","amount_cents":1.5}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "zero amount",
            "POST",
            json_ct,
            alice(0).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "negative amount",
            "POST",
            json_ct,
            alice(-5).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "amount over the limit",
            "POST",
            json_ct,
            alice(1_000_000_000_001).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "amount overflowing i64",
            "POST",
            json_ct,
            r#"{"user_id":"alice","item":"book","amount_cents":99999999999999999999}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "empty user",
            "POST",
            json_ct,
            json!({"user_id":"  ","item":"book","amount_cents":1}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "oversized item",
            "POST",
            json_ct,
            json!({"user_id":"alice","item":long,"amount_cents":1}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "wrong content type",
            "POST",
            "text/plain",
            alice(1).to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "oversized body",
            "POST",
            json_ct,
            format!(
                r#"{{"user_id":"alice","item":"{}","amount_cents":1}}"#,
                "y".repeat(100_000)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "wrong method",
            "GET",
            json_ct,
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (what, method, ct, body, status, code) in cases {
        let req = app
            .http
            .request(method.parse().unwrap(), format!("{}/buy", app.base))
            .header("content-type", ct)
            .body(body);
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), status, "{what}");
        let err: Value = res
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        assert_eq!(err["error"]["code"], code, "{what}: {err}");
        assert!(err["error"]["message"].is_string(), "{what}: {err}");
    }

    let long_user = json!({"user_id": "u".repeat(65), "item": "book", "amount_cents": 1});
    let res = app.buy(long_user, None).await;
    assert_eq!(
        res.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "user_id over 64 characters"
    );

    for key in ["k".repeat(300), " ".into()] {
        let res = app
            .http
            .post(format!("{}/buy", app.base))
            .header("Idempotency-Key", &key)
            .json(&alice(1))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::BAD_REQUEST,
            "Idempotency-Key {key:?}"
        );
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_idempotency_key");
    }

    for (path, status, code) in [
        (
            "/orders/not-a-uuid",
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            &*format!("/orders/{}", Uuid::now_v7()),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("/no/such/route", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let res = app.get(path).await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], code, "{path}");
    }
    assert_eq!(app.count("orders").await, 0);
    assert_eq!(app.count("outbox").await, 0);
}

/// Readiness, and which broker node each connection is on. `AMQP_URL` lists a dead address
/// first: every connection passes over it to the live one, and `/readyz` and `/metrics` name
/// that node for each.
#[tokio::test]
async fn health_and_readiness() {
    let live = test_kit::test_amqp();
    let amqp = message_table::amqp::AmqpConfig {
        url: format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", live.url),
        ..live
    };
    let app = spawn_order(&amqp).await;
    let health = app.get("/healthz").await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready: Value = test_kit::eventually("order ready", Duration::from_secs(10), || async {
        let res = app.get("/readyz").await.ok()?;
        (res.status() == StatusCode::OK).then_some(())?;
        res.json().await.ok()
    })
    .await;
    assert_eq!(ready["checks"]["database"], "up");
    assert_eq!(ready["checks"]["broker_publisher"], "up");
    assert_eq!(ready["checks"]["broker_consumer"], "up");
    let node = test_kit::broker_addr().to_string();
    for link in ["order/relay", "order/consumer", "order/dead-letters"] {
        let on = test_kit::eventually(link, Duration::from_secs(10), || async {
            let res = app.get("/readyz").await.ok()?;
            let ready: Value = res.json().await.ok()?;
            ready["broker_links"][link].as_str().map(str::to_string)
        })
        .await;
        assert_eq!(on, node, "{link}");
    }
    let metrics = app.get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "amqp_connection_up{{link=\"order/consumer\",node=\"{node}\"}} 1"
        )),
        "{metrics}"
    );
}

/// `GET /openapi.json` is an OpenAPI 3.1 document naming every route, admin ones included,
/// with the error shape and the replay header of `POST /buy`.
#[tokio::test]
async fn openapi_document_names_every_route() {
    let amqp = test_kit::test_amqp();
    let app = spawn_order(&amqp).await;
    let res = reqwest::get(format!("{}/openapi.json", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json().await.unwrap();
    let operations: Vec<(&str, &str)> = [
        ("/buy", "post"),
        ("/orders/{id}/cancel", "post"),
        ("/orders/{id}", "get"),
        ("/orders", "get"),
        ("/admin/reconciliation", "get"),
        ("/admin/orders/{id}/story", "get"),
    ]
    .into_iter()
    .chain(test_kit::openapi::STANDARD)
    .chain(test_kit::openapi::MESSAGE_TABLE_ADMIN)
    .collect();
    test_kit::openapi::assert_documents(&doc, &operations);
    let created = &doc["paths"]["/buy"]["post"]["responses"]["201"];
    assert!(created["headers"]["idempotent-replayed"].is_object());
    let cancel = &doc["paths"]["/orders/{id}/cancel"]["post"];
    assert!(cancel["responses"]["202"]["headers"]["idempotent-replayed"].is_object());
    assert!(cancel["responses"]["409"].is_object());
    let statuses = &doc["components"]["schemas"]["OrderStatus"]["enum"];
    assert_eq!(
        statuses.as_array().map(Vec::len),
        Some(order::OrderStatus::ALL.len())
    );
    let props = &doc["components"]["schemas"]["BuyResponse"]["properties"];
    for field in ["order_id", "message_id", "status"] {
        assert!(props[field].is_object(), "BuyResponse.{field}");
    }
    assert!(doc["components"]["schemas"]["Order"]["properties"]["order_id"].is_object());
}

/// `GET /orders?limit=N`: the newest orders first, `limit` 1 to 100 (20 when absent).
#[tokio::test]
async fn the_newest_orders_are_listed_newest_first() {
    let amqp = test_kit::test_amqp();
    let app = spawn_order(&amqp).await;
    let mut ids = Vec::new();
    for amount in [1, 2, 3] {
        let body: Value = app.buy(alice(amount), None).await.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().to_string());
    }
    let list = |query: &str| {
        let url = format!("{}/orders{query}", app.base);
        async move {
            let res = reqwest::get(url).await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };

    let (status, body) = list("?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&str> = body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(body["orders"][0]["status"], "PENDING_PAYMENT");
    let (_, all) = list("").await;
    assert_eq!(all["orders"].as_array().unwrap().len(), 3);

    for query in ["?limit=0", "?limit=101", "?limit=x", "?limit=-1"] {
        let (status, body) = list(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["error"]["code"], "invalid_limit", "{query}: {body}");
    }
}

/// `GET /admin/orders/{id}/story`: the order, its `OrderCreated` outbox row and the inbox
/// rows of pay's answers (none here: no pay runs); behind the token; 404 for no order.
#[tokio::test]
async fn the_story_of_an_order_is_orders_rows_about_it() {
    let amqp = test_kit::test_amqp();
    let _queue = TestQueue::bind(&amqp, &["order.created"]).await;
    let app = spawn_order(&amqp).await;
    let body: Value = app.buy(alice(700), None).await.json().await.unwrap();
    let order_id = body["order_id"].as_str().unwrap().to_string();
    let message_id = &body["message_id"];
    let story = |id: String| {
        app.http
            .get(format!("{}/admin/orders/{id}/story", app.base))
            .header("authorization", test_kit::admin_bearer())
            .send()
    };

    let told: Value = test_kit::eventually("published", Duration::from_secs(10), || async {
        let told: Value = story(order_id.clone()).await.ok()?.json().await.ok()?;
        (told["order_created"]["status"] == "sent").then_some(told)
    })
    .await;
    assert_eq!(told["order"]["order_id"], order_id);
    assert_eq!(told["order"]["status"], "PENDING_PAYMENT");
    assert_eq!(&told["order_created"]["id"], message_id);
    assert_eq!(told["order_created"]["attempts"], 1, "{told}");
    assert!(told["order_created"]["sent_at"].is_string(), "{told}");
    assert_eq!(told["replies"], json!([]));
    assert_eq!(
        told["order_cancelled"],
        Value::Null,
        "not cancelled: {told}"
    );

    let missing = story(Uuid::now_v7().to_string()).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let bad = story("x".into()).await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let anonymous = reqwest::get(format!("{}/admin/orders/{order_id}/story", app.base))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
