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
