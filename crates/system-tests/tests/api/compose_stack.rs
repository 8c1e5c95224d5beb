//! The docker compose stack, running: what `scripts/compose-test.sh` checks from outside once
//! every container is healthy, beside the end-to-end tests (`e2e.rs`) it runs against the
//! same gateway. The script keeps what only docker can tell (the containers' health, the
//! user the services run as); these are HTTP and SQL.
//!
//! Ignored in a plain `cargo test` (no compose stack); the script runs them with
//! `--include-ignored` and sets `COMPOSE_GATEWAY_URL`, `COMPOSE_PROMETHEUS_URL`,
//! `COMPOSE_MANAGEMENT_URL` (the published ports) and `COMPOSE_POSTGRES_HOST` (the postgres
//! container's address: its port is not published). The credentials are docker-compose.yml's:
//! `ORDER_DB_PASSWORD`, `PAY_DB_PASSWORD`, `RABBITMQ_USER`, `RABBITMQ_PASSWORD` when set,
//! else its defaults. `COMPOSE_SCRAPE_SECS` (default 60, four scrape intervals) is how long
//! Prometheus may take.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde_json::Value;
use test_kit::eventually;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (scripts/compose-test.sh)"))
}

/// A variable docker-compose.yml reads, or its default there.
fn compose_var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

fn scrape_deadline() -> Duration {
    Duration::from_secs(
        compose_var("COMPOSE_SCRAPE_SECS", "60")
            .parse()
            .expect("seconds"),
    )
}

/// GET Prometheus's HTTP API (`/api/v1/ENDPOINT`), its `data`.
async fn prometheus(endpoint: &str, query: Option<&str>) -> Value {
    let mut url = Url::parse(&format!(
        "{}/api/v1/{endpoint}",
        env("COMPOSE_PROMETHEUS_URL")
    ))
    .expect("a URL");
    if let Some(q) = query {
        url.query_pairs_mut().append_pair("query", q);
    }
    let body: Value = reqwest::get(url)
        .await
        .expect("Prometheus answers")
        .json()
        .await
        .expect("JSON");
    body["data"].clone()
}

/// "JOB=HEALTH" of each active target (health: unknown until its first scrape, then up or down).
async fn targets() -> BTreeSet<String> {
    let data = prometheus("targets", None).await;
    let active = data["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    active
        .iter()
        .map(|t| {
            format!(
                "{}={}",
                t["labels"]["job"].as_str().unwrap_or("?"),
                t["health"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// An instant query's first value (None when it has no sample yet).
async fn sample(query: &str) -> Option<f64> {
    let data = prometheus("query", Some(query)).await;
    data["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
#[ignore = "run by scripts/compose-test.sh against the compose stack"]
async fn prometheus_scrapes_exactly_order_pay_and_gateway_and_each_is_up() {
    let jobs: BTreeSet<String> = targets()
        .await
        .iter()
        .map(|t| t.split('=').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        jobs,
        BTreeSet::from(["gateway".into(), "order".into(), "pay".into()]),
        "Prometheus's jobs"
    );
    // Prometheus does not wait for the services: its first scrape may have failed, the next
    // one (15 s later) is the one that counts.
    let up = BTreeSet::from(["gateway=up".to_string(), "order=up".into(), "pay=up".into()]);
    eventually("every target scraped and up", scrape_deadline(), || async {
        (targets().await == up).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "run by scripts/compose-test.sh against the compose stack"]
async fn prometheus_holds_real_samples_the_requests_included() {
    eventually("up{job=\"order\"} is 1", scrape_deadline(), || async {
        (sample("up{job=\"order\"}").await == Some(1.0)).then_some(())
    })
    .await;
    // Three POSTs the gateway counts (refused as malformed: they change nothing the
    // end-to-end tests running beside look at), then a scrape brings them.
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let res = http
            .post(format!("{}/order/buy", env("COMPOSE_GATEWAY_URL")))
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
    let query = "sum(http_requests_total{job=\"gateway\",method=\"POST\"})";
    eventually(
        "the gateway's http_requests_total counts 3 POSTs or more",
        scrape_deadline(),
        || async { (sample(query).await >= Some(3.0)).then_some(()) },
    )
    .await;
}

#[tokio::test]
#[ignore = "run by scripts/compose-test.sh against the compose stack"]
async fn each_database_user_reaches_only_its_own_database() {
    let host = env("COMPOSE_POSTGRES_HOST");
    let order = (
        "order_user",
        compose_var("ORDER_DB_PASSWORD", "order-secret"),
    );
    let pay = ("pay_user", compose_var("PAY_DB_PASSWORD", "pay-secret"));
    let connect = |(user, password): &(&str, String), db: &str| {
        let url = format!("postgres://{user}:{password}@{host}:5432/{db}");
        async move { sqlx::PgPool::connect(&url).await }
    };
    connect(&order, "order_db")
        .await
        .expect("order_user connects to order_db");
    connect(&pay, "pay_db")
        .await
        .expect("pay_user connects to pay_db");
    for (user, db) in [(&order, "pay_db"), (&order, "postgres"), (&pay, "order_db")] {
        match connect(user, db).await {
            Ok(_) => panic!("{} connected to {db}", user.0),
            Err(e) => assert!(
                e.to_string().contains("permission denied for database"),
                "{} cannot connect to {db}: want permission denied, got {e}",
                user.0
            ),
        }
    }
}

#[tokio::test]
#[ignore = "run by scripts/compose-test.sh against the compose stack"]
async fn the_management_api_answers_with_the_configured_user() {
    let res = reqwest::Client::new()
        .get(format!("{}/api/overview", env("COMPOSE_MANAGEMENT_URL")))
        .basic_auth(
            compose_var("RABBITMQ_USER", "lmt"),
            Some(compose_var("RABBITMQ_PASSWORD", "lmt-secret")),
        )
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the management API answers");
    assert_eq!(res.status(), StatusCode::OK);
}
