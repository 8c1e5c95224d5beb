//! The gateway's `GET /openapi.json`: order's and pay's documents under their prefixes, the
//! admin routes under `/admin/<route>/` only when the gateway forwards them, the services'
//! internal paths left out, and a 502 when a route cannot say what it serves.

use serde_json::Value;
use test_kit::openapi::{MESSAGE_TABLE_ADMIN, STANDARD, assert_documents};

/// A gateway in front of `routes`, with the admin forwarding on when `token` is given.
async fn gateway(routes: &str, token: Option<&str>) -> String {
    use common::config::Settings;
    let mut config = gateway::GatewaySettings::try_load_from(["gateway"])
        .expect("gateway settings")
        .into_config()
        .expect("gateway config");
    config.addr = "127.0.0.1:0".into();
    config.routes = gateway::routes::RouteTable::parse(routes).expect("routes");
    if let Some(token) = token {
        config.admin = common::admin::AdminAuth::parse(token).expect("token");
    }
    let app = gateway::Application::build(config).await.expect("gateway");
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    base
}

async fn document(base: &str) -> (reqwest::StatusCode, Value) {
    let res = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    (res.status(), res.json().await.unwrap())
}

#[tokio::test]
async fn the_gateway_serves_both_documents_under_their_prefixes() {
    let amqp = test_kit::test_amqp();
    let system = system_tests::start(&amqp, &amqp).await;
    let routes = format!("/order={},/pay={}", system.order, system.pay);
    let with_admin = gateway(&routes, Some("a-token-of-twenty-chars")).await;

    let (status, doc) = document(&with_admin).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let admin: Vec<String> = ["order", "pay"]
        .into_iter()
        .flat_map(|route| {
            MESSAGE_TABLE_ADMIN
                .iter()
                .map(move |(path, _)| path.replacen("/admin", &format!("/admin/{route}"), 1))
        })
        .chain(
            [
                "/admin/order/reconciliation",
                "/admin/order/orders/{id}/story",
                "/admin/pay/payments/{order_id}/story",
            ]
            .map(String::from),
        )
        .collect();
    let methods = MESSAGE_TABLE_ADMIN
        .iter()
        .chain(MESSAGE_TABLE_ADMIN.iter())
        .map(|(_, m)| *m)
        .chain(["get", "get", "get"]);
    let mut operations: Vec<(&str, &str)> = vec![
        ("/order/buy", "post"),
        ("/order/orders/{id}/cancel", "post"),
        ("/order/orders/{id}", "get"),
        ("/order/orders", "get"),
        ("/order/openapi.json", "get"),
        ("/pay/payments/{order_id}", "get"),
        ("/pay/accounts/{user_id}", "get"),
        ("/pay/payments/lookup", "post"),
        ("/pay/openapi.json", "get"),
    ];
    operations.extend(STANDARD);
    operations.extend(admin.iter().map(String::as_str).zip(methods));
    assert_documents(&doc, &operations);

    // Operation ids stay unique across the services.
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "{ids:?}");
    assert_eq!(
        doc["paths"]["/order/buy"]["post"]["operationId"],
        "order_buy"
    );
    // Both services' schemas are there, and the gateway's own failures are documented.
    assert!(doc["components"]["schemas"]["BuyRequest"].is_object());
    assert!(doc["components"]["schemas"]["LookupRequest"].is_object());
    assert!(doc["paths"]["/pay/payments/lookup"]["post"]["responses"]["502"].is_object());

    // Without the admin token, the gateway has no admin routes, and none are documented.
    let (_, doc) = document(&system.gateway).await;
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert!(paths.iter().all(|p| !p.starts_with("/admin")), "{paths:?}");
    assert!(doc["paths"]["/order/buy"]["post"].is_object());
}

#[tokio::test]
async fn a_route_that_cannot_send_its_document_makes_the_answer_a_502() {
    let amqp = test_kit::test_amqp();
    let system = system_tests::start(&amqp, &amqp).await;
    // Nothing listens on port 9 of this host's loopback.
    let routes = format!("/order={},/pay=http://127.0.0.1:9", system.order);
    let base = gateway(&routes, None).await;
    let (status, body) = document(&base).await;
    assert_eq!(status, reqwest::StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "bad_gateway");
}
