//! The admin API's token, listing, bulk requeue and purge on a running pay service, on rows
//! written straight into its tables (dead and sent rows: the workers leave them alone).

use crate::support;

use std::collections::BTreeSet;

use chrono::Utc;
use common::admin::AdminAuth;
use message_table::{InboxStatus, OutboxStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use test_kit::TestDb;
use uuid::Uuid;

const HOUR: i64 = 3600;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

use support::admin_call as call;

/// An outbox row `hours_ago` old.
async fn outbox_row(pool: &PgPool, status: OutboxStatus, event_type: &str, hours_ago: i64) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox (id, aggregate_id, event_type, routing_key, payload, status,
                             expires_at, created_at)
         VALUES ($1, 'a', $2, 'nowhere.test', '{}', $3, now() + interval '1 day',
                 now() - make_interval(secs => $4))",
    )
    .bind(id)
    .bind(event_type)
    .bind(status)
    .bind((hours_ago * HOUR) as f64)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn inbox_row(pool: &PgPool, status: InboxStatus, poison: bool, hours_ago: i64) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO inbox (message_id, event_type, payload, status, received_at)
         VALUES ($1, 'OrderCreated', CASE WHEN $2 THEN NULL ELSE '{}'::jsonb END, $3,
                 now() - make_interval(secs => $4))",
    )
    .bind(id)
    .bind(poison)
    .bind(status)
    .bind((hours_ago * HOUR) as f64)
    .execute(pool)
    .await
    .unwrap();
    id
}

fn ago(hours: i64) -> String {
    (Utc::now() - chrono::Duration::seconds(hours * HOUR)).to_rfc3339()
}

fn ids(items: &Value, field: &str) -> Vec<Uuid> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[field].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn the_token_guards_every_admin_route() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    for (path, authorization) in [
        ("/admin/stats", None),
        (
            "/admin/stats",
            Some("Bearer test-admin-token-0123456788".to_string()),
        ),
        (
            "/admin/stats",
            Some(format!("{}-longer", test_kit::admin_bearer())),
        ),
        ("/admin/stats", Some("Bearer short".to_string())),
        ("/admin/outbox?status=dead", None),
        ("/admin/no-such-route", None),
    ] {
        let mut request = client().get(format!("{}{path}", pay.base));
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let res = request.send().await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::UNAUTHORIZED,
            "{path} {authorization:?}"
        );
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let (status, stats) = call(client().get(format!("{}/admin/stats", pay.base))).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["outbox_oldest_pending_age_seconds"], 0.0, "{stats}");
    // A row waiting two hours (not due before tomorrow, so no relay claims it meanwhile).
    sqlx::query(
        "INSERT INTO outbox (id, aggregate_id, event_type, routing_key, payload, expires_at,
                             next_attempt_at, created_at)
         VALUES ($1, 'a', 'PaymentCompleted', 'nowhere.test', '{}', now() + interval '2 days',
                 now() + interval '1 day', now() - interval '2 hours')",
    )
    .bind(Uuid::now_v7())
    .execute(&pay.db.pool)
    .await
    .unwrap();
    let (_, stats) = call(client().get(format!("{}/admin/stats", pay.base))).await;
    let age = stats["outbox_oldest_pending_age_seconds"].as_f64().unwrap();
    assert!((7200.0..7300.0).contains(&age), "{stats}");
    // The service's other routes need no token.
    let res = reqwest::get(format!("{}/healthz", pay.base)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_admin_token_the_admin_api_is_off() {
    let amqp = test_kit::test_amqp();
    let db = TestDb::new(&pay::MIGRATOR).await;
    let messaging = test_kit::messaging(&amqp, "test.pay", messages::PAY_QUEUE.routing_keys);
    let mut config = test_kit::service_config(&db.url, &messaging, 3);
    config.admin = AdminAuth::off();
    let base = test_kit::spawn_pay(config).await.base;
    for path in ["/admin/stats", "/admin/outbox", "/admin/nothing"] {
        let (status, body) = call(client().get(format!("{base}{path}"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
}

#[tokio::test]
async fn listing_pages_filters_requeues_and_purges() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    let pool = &pay.db.pool;
    let base = pay.base.as_str();

    // 7 dead rows of two types at various ages, 2 sent rows.
    let mut dead = Vec::new();
    for hours in [1, 2, 3, 30, 40, 50] {
        dead.push(outbox_row(pool, OutboxStatus::Dead, "PaymentCompleted", hours).await);
    }
    let other = outbox_row(pool, OutboxStatus::Dead, "PaymentFailed", 60).await;
    dead.push(other);
    let sent_old = outbox_row(pool, OutboxStatus::Sent, "PaymentCompleted", 70).await;
    let sent_new = outbox_row(pool, OutboxStatus::Sent, "PaymentCompleted", 1).await;

    // A cursor walks every dead row exactly once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{base}/admin/outbox?status=dead&limit=3");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = call(client().get(url)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page["items"], "id"));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, dead, "newest first, each once");

    // Filters: status, event type, age.
    let list = |query: &str| call(client().get(format!("{base}/admin/outbox?{query}")));
    let (_, all) = list("").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 9);
    let (_, sent) = list("status=sent").await;
    assert_eq!(ids(&sent["items"], "id"), [sent_new, sent_old]);
    let (_, failed) = list("event_type=PaymentFailed").await;
    assert_eq!(ids(&failed["items"], "id"), [other]);
    let before = urlencoding(&ago(24));
    let (_, old) = list(&format!("status=dead&before={before}")).await;
    assert_eq!(ids(&old["items"], "id"), dead[3..]);

    // Requeue a list: the dead ones only; the others are named.
    let unknown = Uuid::now_v7();
    let (status, body) = call(
        client()
            .post(format!("{base}/admin/outbox/requeue"))
            .json(&json!({ "ids": [dead[0], sent_old, unknown] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["requeued"], 1);
    let not: BTreeSet<Uuid> = serde_json::from_value(body["not_requeued"].clone()).unwrap();
    assert_eq!(not, BTreeSet::from([sent_old, unknown]));
    // All dead matching a filter.
    let (_, body) = call(
        client()
            .post(format!("{base}/admin/outbox/requeue"))
            .json(&json!({ "all": true, "event_type": "PaymentFailed" })),
    )
    .await;
    assert_eq!(body["requeued"], 1, "{body}");

    // Purge: dead and older than the date only; sent rows of any age stay.
    let (status, body) = call(client().delete(format!(
        "{base}/admin/outbox/dead?before={}",
        urlencoding(&ago(45))
    )))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], 1, "{body}");
    for (id, status) in [
        (sent_old, Some(OutboxStatus::Sent)),
        (dead[4], Some(OutboxStatus::Dead)),
        (dead[5], None),
    ] {
        assert_eq!(
            message_table::outbox::status_of(pool, id).await.unwrap(),
            status
        );
    }

    // The inbox: poison is never requeued; purge keeps recent dead and other statuses.
    let readable = inbox_row(pool, InboxStatus::Dead, false, 50).await;
    let poison = inbox_row(pool, InboxStatus::Dead, true, 50).await;
    let recent = inbox_row(pool, InboxStatus::Dead, true, 1).await;
    let processed = inbox_row(pool, InboxStatus::Processed, false, 50).await;
    let (_, page) = call(client().get(format!("{base}/admin/inbox?status=dead&limit=2"))).await;
    assert_eq!(ids(&page["items"], "message_id"), [recent, poison]);
    assert!(page["next_cursor"].is_string());
    let (_, body) = call(
        client()
            .post(format!("{base}/admin/inbox/requeue"))
            .json(&json!({ "ids": [readable, poison] })),
    )
    .await;
    assert_eq!(body["requeued"], 1, "{body}");
    let (_, body) = call(client().delete(format!(
        "{base}/admin/inbox/dead?before={}",
        urlencoding(&ago(24))
    )))
    .await;
    assert_eq!(body["deleted"], 1, "{body}");
    for (id, status) in [
        (poison, None),
        (recent, Some(InboxStatus::Dead)),
        (processed, Some(InboxStatus::Processed)),
    ] {
        assert_eq!(
            message_table::inbox::status_of(pool, id).await.unwrap(),
            status
        );
    }
}

#[tokio::test]
async fn bad_inputs_are_4xx_in_the_projects_shape() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    let base = pay.base.as_str();
    let get = |q: &str| client().get(format!("{base}{q}"));
    let requeue = |body: Value| {
        client()
            .post(format!("{base}/admin/outbox/requeue"))
            .json(&body)
    };
    for (request, expected, code) in [
        (get("/admin/outbox?cursor=nope"), 400, "invalid_cursor"),
        (get("/admin/inbox?cursor=1.2"), 400, "invalid_cursor"),
        (get("/admin/outbox?status=zombie"), 400, "invalid_status"),
        (get("/admin/inbox?status=pending"), 400, "invalid_status"),
        (get("/admin/outbox?limit=0"), 400, "invalid_limit"),
        (get("/admin/outbox?limit=501"), 400, "invalid_limit"),
        (get("/admin/inbox?limit=many"), 400, "invalid_limit"),
        (get("/admin/outbox?before=yesterday"), 400, "invalid_before"),
        (
            client().delete(format!("{base}/admin/outbox/dead")),
            400,
            "invalid_before",
        ),
        (
            client().delete(format!("{base}/admin/inbox/dead?before=2026-13-01")),
            400,
            "invalid_before",
        ),
        (
            requeue(json!({ "ids": ["not-a-uuid"] })),
            422,
            "invalid_body",
        ),
        (requeue(json!({ "ids": [] })), 422, "validation_failed"),
        (requeue(json!({})), 422, "validation_failed"),
        (
            requeue(json!({ "ids": [Uuid::now_v7()], "all": true })),
            422,
            "validation_failed",
        ),
        (
            requeue(json!({ "all": true, "before": "soon" })),
            422,
            "invalid_body",
        ),
        // Keys the chosen shape does not have are refused even when `null` or `false`, as
        // the document says (schemathesis found `{"ids": [..], "before": null}` accepted).
        (
            requeue(json!({ "ids": [Uuid::now_v7()], "before": null, "event_type": null })),
            422,
            "validation_failed",
        ),
        (
            requeue(json!({ "ids": [Uuid::now_v7()], "all": false })),
            422,
            "validation_failed",
        ),
        (
            requeue(json!({ "all": true, "ids": null })),
            422,
            "validation_failed",
        ),
        (requeue(json!({ "ids": null })), 422, "validation_failed"),
        (requeue(json!({ "all": false })), 422, "validation_failed"),
        (
            client().post(format!("{base}/admin/inbox/x/requeue")),
            400,
            "invalid_path",
        ),
    ] {
        let (status, body) = call(request).await;
        assert_eq!(status.as_u16(), expected, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
}

/// `+` of a time zone offset would read as a space in a query string.
fn urlencoding(value: &str) -> String {
    value.replace('+', "%2B").replace(':', "%3A")
}
