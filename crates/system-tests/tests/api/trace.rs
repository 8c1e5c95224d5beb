//! One trace per order, as an operator sees it: the three real binaries with
//! `LOG_FORMAT=json`, one `POST /order/buy` through the gateway, and the same trace id in
//! the three logs and on both messages (in the outboxes and on the wire), and exported to
//! an OTLP collector by each service.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::trace::{TRACEPARENT, TraceParent};
use message_table::amqp::AmqpConfig;
use serde_json::{Value, json};
use test_kit::{ServiceProcess, TestDb, TestQueue};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(30);

struct Running {
    order_db: TestDb,
    pay_db: TestDb,
    order: ServiceProcess,
    pay: ServiceProcess,
    gateway: ServiceProcess,
    broker: TestQueue,
    amqp: AmqpConfig,
    /// The bodies the services exported to `/v1/traces`.
    exported: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// A stand-in OTLP/HTTP collector: keeps every body posted to `/v1/traces`. Returns its URL.
async fn collector(exported: Arc<Mutex<Vec<Vec<u8>>>>) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| async move {
            exported.lock().unwrap().push(body.to_vec());
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn start() -> Running {
    let exported = Arc::default();
    let otlp = collector(Arc::clone(&exported)).await;
    let amqp = AmqpConfig {
        // The binaries declare a durable exchange: the test deletes it at the end.
        exchange_auto_delete: false,
        ..test_kit::test_amqp()
    };
    let broker = TestQueue::bind(
        &amqp,
        &["order.created", "payment.completed", "payment.failed"],
    )
    .await;
    let shared = [
        ("AMQP_URL", amqp.url.clone()),
        ("AMQP_EXCHANGE", amqp.exchange.clone()),
        ("AMQP_QUEUE_EXPIRES_MS", "120000".to_string()),
        ("LOG_FORMAT", "json".into()),
        ("RUST_LOG", "info,sqlx=warn,lapin=warn".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
    ];

    let pay_db = TestDb::new(&pay::MIGRATOR).await;
    let pay = start_service(&test_kit::service_binary("pay"), "PAY", &pay_db, &shared).await;
    let order_db = TestDb::new(&order::MIGRATOR).await;
    let order = start_service(
        &test_kit::service_binary("order"),
        "ORDER",
        &order_db,
        &shared,
    )
    .await;
    let gateway = ServiceProcess::start(
        &test_kit::service_binary("gateway"),
        "GATEWAY_ADDR",
        &[
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
            (
                "GATEWAY_ROUTES",
                format!("/order={},/pay={}", order.base, pay.base),
            ),
        ],
    )
    .await;
    Running {
        order_db,
        pay_db,
        order,
        pay,
        gateway,
        broker,
        amqp,
        exported,
    }
}

/// order or pay (`prefix` of its variables) on `db`, with the `shared` variables, its own
/// queue and a small pool.
async fn start_service(
    bin: &str,
    prefix: &str,
    db: &TestDb,
    shared: &[(&str, String)],
) -> ServiceProcess {
    let names = ["DATABASE_URL", "DB_MAX_CONNECTIONS", "QUEUE"].map(|v| format!("{prefix}_{v}"));
    let queue = test_kit::unique_name(&format!("test.{}", prefix.to_lowercase()));
    let own = [db.url.clone(), "3".into(), queue];
    let mut env = shared.to_vec();
    env.extend(names.iter().map(String::as_str).zip(own));
    ServiceProcess::start(bin, &format!("{prefix}_ADDR"), &env).await
}

/// `POST /order/buy` through the gateway, with the client's `traceparent` if any; waits
/// until the order is settled.
async fn buy(sys: &Running, traceparent: Option<&str>) -> Uuid {
    let http = reqwest::Client::new();
    let mut req = http
        .post(format!("{}/order/buy", sys.gateway.base))
        .json(&json!({ "user_id": "alice", "item": "book", "amount_cents": 700 }));
    if let Some(tp) = traceparent {
        req = req.header(TRACEPARENT, tp);
    }
    let res = req.send().await.expect("POST /order/buy");
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    let order_id: Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    let url = format!("{}/order/orders/{order_id}", sys.gateway.base);
    test_kit::eventually("the order is paid", SETTLE, || async {
        let order: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
        (order["status"] == "PAID").then_some(())
    })
    .await;
    order_id
}

/// The trace of the message about `order_id` in an outbox (order's OrderCreated, pay's
/// reply), as the row stores it.
async fn outbox_trace(db: &TestDb, order_id: Uuid) -> TraceParent {
    let tp: String =
        sqlx::query_scalar("SELECT headers->>'traceparent' FROM outbox WHERE aggregate_id = $1")
            .bind(order_id.to_string())
            .fetch_one(&db.pool)
            .await
            .expect("the message has a traceparent");
    TraceParent::parse(&tp).unwrap_or_else(|| panic!("invalid traceparent {tp:?}"))
}

/// The JSON lines of `log` whose span, or one of whose enclosing spans, has `field` = `value`.
fn lines_with(log: &str, field: &str, value: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|line| {
            let spans = line["spans"].as_array().into_iter().flatten();
            std::iter::once(&line["span"])
                .chain(spans)
                .any(|span| span[field] == value)
        })
        .collect()
}

/// The line of `lines` with `message`, panicking with what there is when none.
fn line<'a>(lines: &'a [Value], message: &str, service: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["fields"]["message"] == message)
        .unwrap_or_else(|| panic!("{service} logged no {message:?} in the trace: {lines:#?}"))
}

#[tokio::test]
async fn one_order_is_one_trace_in_the_three_logs_and_on_both_messages() {
    let mut sys = start().await;
    let order_id = buy(&sys, None).await;

    // The messages: OrderCreated as order's outbox stored it, the reply as pay's did.
    let created = outbox_trace(&sys.order_db, order_id).await;
    let reply = outbox_trace(&sys.pay_db, order_id).await;
    let trace_id = created.trace_id_hex();
    assert_eq!(reply.trace_id_hex(), trace_id, "the reply left the trace");
    // Each hop is its own span.
    assert_ne!(reply.parent_id, created.parent_id);

    // On the wire, as the relays sent them.
    let wire = sys
        .broker
        .take_until("both messages", SETTLE, |taken| taken.len() >= 2)
        .await;
    for delivery in &wire {
        let headers = delivery.properties.headers().as_ref().expect("headers");
        let tp = headers
            .inner()
            .get(TRACEPARENT)
            .and_then(|v| v.as_long_string())
            .map(|s| s.to_string())
            .expect("a traceparent header");
        assert_eq!(TraceParent::parse(&tp).unwrap().trace_id_hex(), trace_id);
    }

    // The logs: the gateway's access line, order taking and settling the order, pay paying.
    let order_id_text = order_id.to_string();
    let gateway = lines_with(&sys.gateway.log_text(), "trace_id", &trace_id);
    let access = line(&gateway, "finished processing request", "the gateway");
    let order_lines = lines_with(&sys.order.log_text(), "trace_id", &trace_id);
    let created_line = line(&order_lines, "order created", "order");
    assert_eq!(created_line["fields"]["order_id"], order_id_text);
    let settled = line(&order_lines, "order settled", "order");
    assert_eq!(settled["span"]["order_id"], order_id_text);
    let pay_lines = lines_with(&sys.pay.log_text(), "trace_id", &trace_id);
    let paid = line(&pay_lines, "payment completed", "pay");
    assert_eq!(paid["span"]["order_id"], order_id_text);
    // The inbox span names the message it handles.
    let inbox_span = paid["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "inbox_receive"))
        .expect("pay's line is inside the inbox span");
    assert!(inbox_span["message_id"].is_string(), "{paid}");
    for (service, l) in [
        ("gateway", access),
        ("order", created_line),
        ("order", settled),
        ("pay", paid),
    ] {
        println!("{service}: {l}");
    }

    // A client's valid traceparent is continued, not replaced.
    let client = TraceParent::new_root();
    let second = buy(&sys, Some(&client.to_string())).await;
    let continued = outbox_trace(&sys.order_db, second).await;
    assert_eq!(continued.trace_id, client.trace_id);
    assert_ne!(continued.parent_id, client.parent_id);

    // Each service exported its spans of the trace (flushed at the latest on SIGTERM).
    for process in [&mut sys.gateway, &mut sys.order, &mut sys.pay] {
        assert!(process.terminate().await.success());
    }
    let id_bytes = created.trace_id.to_be_bytes();
    let exported = sys.exported.lock().unwrap().clone();
    for service in ["gateway", "order", "pay"] {
        // An OTLP body holds the resource's service.name and the spans' raw trace ids.
        let found = exported
            .iter()
            .any(|body| contains(body, &service_name(service)) && contains(body, &id_bytes));
        assert!(
            found,
            "{service} exported no span of the trace ({} bodies)",
            exported.len()
        );
    }
    sys.broker.delete_exchange(&sys.amqp).await;
}

/// The resource attribute `service.name` = `service` as protobuf encodes it (a `KeyValue`
/// whose value is an `AnyValue` string): only that service's export holds it.
fn service_name(service: &str) -> Vec<u8> {
    let len = u8::try_from(service.len()).unwrap();
    let mut bytes = vec![0x0a, 12];
    bytes.extend_from_slice(b"service.name");
    bytes.extend_from_slice(&[0x12, len + 2, 0x0a, len]);
    bytes.extend_from_slice(service.as_bytes());
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
