//! Pay's read API: payments and balances, and its errors.

use std::time::Duration;

use common::testing::{self, TestDb};
use pay::{Application, PayConfig};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

#[tokio::test]
async fn reads_and_their_errors() {
    let amqp = testing::test_amqp();
    let db = TestDb::new(&pay::MIGRATOR).await;
    let app = Application::build(PayConfig {
        addr: "127.0.0.1:0".into(),
        database_url: db.url.clone(),
        db_max_connections: 5,
        messaging: testing::messaging(&amqp, "test.pay", pay::config::ORDER_CREATED_KEYS),
    })
    .await
    .unwrap();
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let res = testing::eventually("pay answers", Duration::from_secs(10), || async {
                reqwest::get(&url).await.ok()
            })
            .await;
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
