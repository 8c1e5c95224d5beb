//! End to end, as a client sees the system: every check goes through the gateway's URL.
//!
//! `scripts/e2e.sh` starts the stack the README's way (`scripts/run-local.sh`) and runs these
//! tests against it; it checks first that the stack starts and becomes ready, and prints the
//! services' log tails when a test fails; `scripts/compose-test.sh` runs them against the
//! docker compose stack, pay stopped and started by docker-compose. Without `E2E_GATEWAY_URL`
//! each test starts its own stack in-process (pay, order and the gateway, fresh databases, a
//! unique exchange), so a plain `cargo test` runs them too.
//!
//! Against a running stack (`E2E_GATEWAY_URL` set) the tests read:
//! - `E2E_GATEWAY_URL`: the gateway's base URL;
//! - `E2E_ADMIN_TOKEN`: the stack's `ADMIN_TOKEN`;
//! - `E2E_STOP_PAY`, `E2E_START_PAY`: shell commands that stop pay and start it again;
//! - `GATEWAY_MAX_BODY_BYTES`, as the stack's gateway has it (default the gateway's);
//!
//! and they take turns, since they share its accounts. `E2E_PAYMENT_DEADLINE_SECS` (default
//! 15) is how long an order may take to settle, in both modes.
//!
//! The checks, one test per section:
//! - a paid order: alice's balance is readable; `POST /order/buy` answers 201
//!   `PENDING_PAYMENT` with an order id and a message id; the order reaches `PAID`;
//!   `GET /order/orders/{id}` shows what was bought; `GET /pay/payments/{id}` is `COMPLETED`
//!   for the amount; alice's balance dropped by exactly that amount;
//! - idempotency: a buy with an `Idempotency-Key` answers 201, not a replay; the same key and
//!   body again answers 201 with the same order id and `idempotent-replayed: true`; the same
//!   key with another amount answers 422 `idempotency_key_reused`;
//! - payments that fail: carol (no money) gets 201, her order ends `PAYMENT_FAILED` with
//!   `insufficient_funds`, her payment is `FAILED` with that reason, her balance is unchanged;
//!   an unknown user's order ends `PAYMENT_FAILED` with `unknown_user`;
//! - client errors, each a JSON error: malformed JSON 400 `malformed_json`; `amount_cents` 0
//!   422 `validation_failed`; an unknown order 404 `not_found`;
//! - the gateway: an unknown prefix 404 `no_route` with an `x-request-id`; a service's internal
//!   paths (`/order/readyz`, `/order/metrics`) 404 `no_route`; `/admin/pay/stats` 401
//!   `unauthorized` without the admin token and pay's stats with it; its `/readyz` shows each
//!   route's instances up; a body of `GATEWAY_MAX_BODY_BYTES` + 1 answers 413
//!   `body_too_large`; a given `x-request-id` is echoed, a missing one generated (per request);
//! - pay down: pay stops; `/pay/...` answers 502 `bad_gateway` and the gateway's `/readyz` 503;
//!   a buy still answers 201 and the order stays `PENDING_PAYMENT`; pay starts again; the order
//!   reaches `PAID`, its payment is `COMPLETED` and alice was debited once.

use std::time::Duration;

use reqwest::{StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use service_kit::service::MessagingConfig;
use system_tests::spawn_gateway;
use test_kit::{Instance, TestDb, service_config, spawn_order, spawn_pay};
use tokio::sync::{Mutex, MutexGuard};

/// One test at a time on a running stack: they share its accounts.
static TURNS: Mutex<()> = Mutex::const_new(());

/// The stack under test.
struct Stack {
    gateway: String,
    admin_token: String,
    http: reqwest::Client,
    settle_within: Duration,
    pay: Pay,
    _turn: Option<MutexGuard<'static, ()>>,
}

/// How the pay-down test stops and starts pay.
enum Pay {
    /// A stack started elsewhere: shell commands.
    Commands { stop: String, start: String },
    /// Started here: pay is restarted on the same address, database and queue.
    InProcess(Box<InProcess>),
}

struct InProcess {
    pay: Option<Instance>,
    pay_addr: String,
    pay_db: TestDb,
    pay_messaging: MessagingConfig,
    _order: Instance,
    _order_db: TestDb,
}

/// What a request got.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// The body's field at a JSON pointer, as text ("" when absent).
    fn text(&self, pointer: &str) -> String {
        match self.body.pointer(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        }
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// The answer is the JSON error `{"error":{"code","message"}}` with this status.
    fn assert_error(&self, status: u16, code: &str) {
        assert!(
            self.status.as_u16() == status
                && self.text("/error/code") == code
                && !self.text("/error/message").is_empty(),
            "want HTTP {status} with error code {code}, got {self:?}"
        );
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set with E2E_GATEWAY_URL"))
}

impl Stack {
    async fn start() -> Stack {
        let settle_within = Duration::from_secs(
            std::env::var("E2E_PAYMENT_DEADLINE_SECS")
                .map(|s| s.parse().expect("E2E_PAYMENT_DEADLINE_SECS: seconds"))
                .unwrap_or(15),
        );
        let http = reqwest::Client::new();
        if let Ok(gateway) = std::env::var("E2E_GATEWAY_URL") {
            let admin_token = env("E2E_ADMIN_TOKEN");
            let pay = Pay::Commands {
                stop: env("E2E_STOP_PAY"),
                start: env("E2E_START_PAY"),
            };
            let turn = TURNS.lock().await;
            return Stack {
                gateway: gateway.trim_end_matches('/').into(),
                admin_token,
                http,
                settle_within,
                pay,
                _turn: Some(turn),
            };
        }
        let amqp = test_kit::test_amqp();
        let pay_db = TestDb::new(&pay::MIGRATOR).await;
        let pay_messaging =
            test_kit::messaging(&amqp, "test.pay", messages::PAY_QUEUE.routing_keys);
        let pay = spawn_pay(service_config(&pay_db.url, &pay_messaging, 5)).await;
        let order_db = TestDb::new(&order::MIGRATOR).await;
        let order_messaging =
            test_kit::messaging(&amqp, "test.order", messages::ORDER_QUEUE.routing_keys);
        let order = spawn_order(service_config(&order_db.url, &order_messaging, 5)).await;
        let gateway = spawn_gateway(&order.base, &pay.base, Some(test_kit::admin())).await;
        Stack {
            gateway,
            admin_token: test_kit::ADMIN_TOKEN.into(),
            http,
            settle_within,
            pay: Pay::InProcess(Box::new(InProcess {
                pay_addr: pay.base.trim_start_matches("http://").into(),
                pay: Some(pay),
                pay_db,
                pay_messaging,
                _order: order,
                _order_db: order_db,
            })),
            _turn: None,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let res = req.send().await.expect("the gateway answers");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("a body");
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// A POST that announces a body of `length` bytes and waits for the answer before
    /// sending it (`Expect: 100-continue`, as curl does for a large body): the gateway refuses
    /// a declared length over its limit at once, and may close before a body is read.
    async fn announce_body(&self, path: &str, length: u64) -> Answer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = self.gateway.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(host)
            .await
            .expect("connect to the gateway");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
             content-length: {length}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.expect("send the head");
        let mut raw = Vec::new();
        // The answer is complete when the gateway closes the connection.
        tcp.read_to_end(&mut raw).await.expect("read the answer");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("an HTTP answer: {text}"));
        Answer {
            status: StatusCode::from_u16(status).expect("a status"),
            headers: HeaderMap::new(),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.gateway)))
            .await
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.gateway))
    }

    fn buy_request(&self, user: &str, amount_cents: i64) -> reqwest::RequestBuilder {
        self.post("/order/buy")
            .json(&json!({ "user_id": user, "item": "e2e book", "amount_cents": amount_cents }))
    }

    async fn buy(&self, user: &str, amount_cents: i64) -> Answer {
        self.send(self.buy_request(user, amount_cents)).await
    }

    async fn balance(&self, user: &str) -> i64 {
        let answer = self.get(&format!("/pay/accounts/{user}")).await;
        assert_eq!(
            answer.status, 200,
            "{user}'s balance is readable: {answer:?}"
        );
        answer.body["balance_cents"]
            .as_i64()
            .expect("balance_cents")
    }

    /// Polls the order until it leaves PENDING_PAYMENT; asserts its status and reason then.
    async fn settles(&self, order_id: &str, status: &str, failure_reason: &str) {
        let order = test_kit::eventually(
            &format!("order {order_id} settles"),
            self.settle_within,
            || async {
                let a = self.get(&format!("/order/orders/{order_id}")).await;
                (a.status == 200 && a.text("/status") != "PENDING_PAYMENT").then_some(a)
            },
        )
        .await;
        assert_eq!(
            (
                order.text("/status").as_str(),
                order.text("/failure_reason").as_str()
            ),
            (status, failure_reason),
            "order {order_id}: {order:?}"
        );
    }

    async fn stop_pay(&mut self) {
        match &mut self.pay {
            Pay::Commands { stop, .. } => shell(stop),
            Pay::InProcess(p) => {
                let pay = p.pay.take().expect("pay is running");
                pay.stop().await.expect("pay stops gracefully");
            }
        }
    }

    async fn start_pay(&mut self) {
        match &mut self.pay {
            Pay::Commands { start, .. } => shell(start),
            Pay::InProcess(p) => {
                let mut config = service_config(&p.pay_db.url, &p.pay_messaging, 5);
                config.addr = p.pay_addr.clone();
                let pay = spawn_pay(config).await;
                p.pay = Some(pay);
            }
        }
    }
}

fn shell(command: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    assert!(status.success(), "{command}: {status}");
}

fn random_amount() -> i64 {
    100 + (uuid::Uuid::new_v4().as_u128() % 900) as i64
}

#[tokio::test]
async fn an_order_is_paid_and_the_balance_debited_by_its_amount() {
    let stack = Stack::start().await;
    let amount = random_amount();
    let before = stack.balance("alice").await;

    let bought = stack.buy("alice", amount).await;
    let order_id = bought.text("/order_id");
    assert!(
        bought.status == 201
            && !order_id.is_empty()
            && !bought.text("/message_id").is_empty()
            && bought.text("/status") == "PENDING_PAYMENT",
        "POST /order/buy answers 201 PENDING_PAYMENT with an order id: {bought:?}"
    );
    stack.settles(&order_id, "PAID", "").await;

    let order = stack.get(&format!("/order/orders/{order_id}")).await;
    assert_eq!(
        (order.text("/user_id"), order.text("/amount_cents")),
        ("alice".into(), amount.to_string()),
        "GET /order/orders/{{id}} shows the order as bought: {order:?}"
    );
    assert_eq!(order.text("/order_id"), order_id);

    let payment = stack.get(&format!("/pay/payments/{order_id}")).await;
    assert!(
        payment.status == 200
            && payment.text("/status") == "COMPLETED"
            && payment.text("/amount_cents") == amount.to_string()
            && payment.text("/order_id") == order_id,
        "GET /pay/payments/{{id}} is COMPLETED for {amount} cents: {payment:?}"
    );
    assert_eq!(
        before - stack.balance("alice").await,
        amount,
        "alice's balance dropped by exactly the amount"
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer() {
    let stack = Stack::start().await;
    let key = test_kit::unique_name("e2e");
    let amount = random_amount();
    let buy = |amount| {
        stack.send(
            stack
                .buy_request("alice", amount)
                .header("idempotency-key", &key),
        )
    };

    let first = buy(amount).await;
    let first_id = first.text("/order_id");
    assert!(
        first.status == 201
            && !first_id.is_empty()
            && first.header("idempotent-replayed") != "true",
        "a buy with an Idempotency-Key answers 201, not a replay: {first:?}"
    );

    let again = buy(amount).await;
    assert_eq!(
        (again.status, again.text("/order_id")),
        (StatusCode::CREATED, first_id.clone()),
        "the same key and body again answers 201 with the same order id: {again:?}"
    );
    assert_eq!(
        again.header("idempotent-replayed"),
        "true",
        "the replay says so"
    );

    buy(amount + 1)
        .await
        .assert_error(422, "idempotency_key_reused");
    // Paid before the next test reads alice's balance (on a running stack they share it).
    stack.settles(&first_id, "PAID", "").await;
}

#[tokio::test]
async fn payments_that_cannot_be_made_fail_the_order() {
    let stack = Stack::start().await;
    let carol_before = stack.balance("carol").await;
    let bought = stack.buy("carol", 500).await;
    let carol_order = bought.text("/order_id");
    assert!(
        bought.status == 201 && !carol_order.is_empty(),
        "carol (no money) can order: {bought:?}"
    );
    stack
        .settles(&carol_order, "PAYMENT_FAILED", "insufficient_funds")
        .await;
    let payment = stack.get(&format!("/pay/payments/{carol_order}")).await;
    assert!(
        payment.status == 200
            && payment.text("/status") == "FAILED"
            && payment.text("/failure_reason") == "insufficient_funds",
        "carol's payment is FAILED with insufficient_funds: {payment:?}"
    );
    assert_eq!(
        stack.balance("carol").await,
        carol_before,
        "carol's balance is unchanged"
    );

    let bought = stack.buy("nobody", 500).await;
    let nobody_order = bought.text("/order_id");
    assert!(
        bought.status == 201 && !nobody_order.is_empty(),
        "an unknown user can order: {bought:?}"
    );
    stack
        .settles(&nobody_order, "PAYMENT_FAILED", "unknown_user")
        .await;
}

#[tokio::test]
async fn client_errors_are_json_errors() {
    let stack = Stack::start().await;
    let malformed = stack
        .post("/order/buy")
        .header("content-type", "application/json");
    stack
        .send(malformed.body(r#"{"user_id": "alice", "item":"#))
        .await
        .assert_error(400, "malformed_json");
    stack
        .buy("alice", 0)
        .await
        .assert_error(422, "validation_failed");
    stack
        .get("/order/orders/00000000-0000-0000-0000-000000000000")
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn the_gateway_routes_guards_and_tags_requests() {
    let stack = Stack::start().await;
    let unknown = stack.get("/nope/anything").await;
    unknown.assert_error(404, "no_route");
    assert!(
        !unknown.header("x-request-id").is_empty(),
        "the gateway's own 404 carries x-request-id: {:?}",
        unknown.headers
    );

    // GATEWAY_INTERNAL_PATHS: a service's internal endpoints are not reachable from outside.
    for path in ["/order/readyz", "/order/metrics"] {
        stack.get(path).await.assert_error(404, "no_route");
    }

    // The admin API through the gateway: with the bearer token only.
    stack
        .get("/admin/pay/stats")
        .await
        .assert_error(401, "unauthorized");
    let stats = stack
        .send(
            stack
                .http
                .get(format!("{}/admin/pay/stats", stack.gateway))
                .bearer_auth(&stack.admin_token),
        )
        .await;
    assert!(
        stats.status == 200 && stats.body["outbox"]["dead"].is_number(),
        "/admin/pay/stats with the admin token answers pay's stats: {stats:?}"
    );

    let ready = stack.get("/readyz").await;
    assert!(
        ready.status == 200
            && ready.text("/instances/order/0/health") == "up"
            && ready.text("/instances/pay/0/health") == "up",
        "the gateway's /readyz shows each route's instances up: {ready:?}"
    );

    let max_body = system_tests::gateway_config().max_body_bytes;
    stack
        .announce_body("/order/buy", max_body + 1)
        .await
        .assert_error(413, "body_too_large");

    let request_id = test_kit::unique_name("e2e");
    let echoed = stack
        .send(
            stack
                .http
                .get(format!("{}/pay/accounts/alice", stack.gateway))
                .header("x-request-id", &request_id),
        )
        .await;
    assert_eq!(
        (echoed.status, echoed.header("x-request-id")),
        (StatusCode::OK, request_id),
        "a given x-request-id is echoed"
    );
    let first = stack
        .get("/pay/accounts/alice")
        .await
        .header("x-request-id");
    let second = stack
        .get("/pay/accounts/alice")
        .await
        .header("x-request-id");
    assert!(
        !first.is_empty() && !second.is_empty() && first != second,
        "an x-request-id is generated when missing, one per request: {first:?}, {second:?}"
    );
}

#[tokio::test]
async fn with_pay_down_orders_are_taken_and_paid_once_it_is_back() {
    let mut stack = Stack::start().await;
    let before = stack.balance("alice").await;
    stack.stop_pay().await;

    stack
        .get("/pay/accounts/alice")
        .await
        .assert_error(502, "bad_gateway");
    let ready = stack.get("/readyz").await;
    assert_eq!(ready.status, 503, "the gateway is not ready: {ready:?}");

    let bought = stack.buy("alice", 321).await;
    let order_id = bought.text("/order_id");
    assert!(
        bought.status == 201 && !order_id.is_empty(),
        "with pay down, an order is still taken: {bought:?}"
    );
    // Time for a wrong outcome to show; the check is the state, not the time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let order = stack.get(&format!("/order/orders/{order_id}")).await;
    assert_eq!(
        order.text("/status"),
        "PENDING_PAYMENT",
        "with pay down, the order waits: {order:?}"
    );

    stack.start_pay().await;
    stack.settles(&order_id, "PAID", "").await;
    let payment = stack.get(&format!("/pay/payments/{order_id}")).await;
    assert!(
        payment.status == 200 && payment.text("/status") == "COMPLETED",
        "its payment is COMPLETED: {payment:?}"
    );
    assert_eq!(
        before - stack.balance("alice").await,
        321,
        "alice was debited once"
    );
}
