//! Per-aggregate order under load and faults: 1,000 orders, each with a seeded random story
//! (bought; cancelled before or after payment; a cancel retried with its Idempotency-Key; a
//! second cancel refused; a buyer without funds), straight at order's HTTP API, while the
//! fault switches stop pay's consumer, pause order's relay, drop broker connections, lose
//! confirms, deliver copies, fail handlers and withhold acks (a consumer "crashed" between
//! commit and ack). Then, for every order: both inboxes applied its messages 1..n in order
//! with nothing parked, it ended in a final state, and the money adds up.
//!
//! Two pay instances compete for pay's queue; the second is stopped (gracefully: its
//! unacked deliveries go back to the broker) and replaced three times during the run. The
//! services run in this process, so none is SIGKILLed; `hold_ack` (a committed batch not
//! acked, redelivered) and `drop_broker_connection` stand in for that crash.
//! The seed is printed; `ORDERING_SEED=<n>` replays a run's stories (the faults' timing
//! still varies with the machine).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use message_table::{inbox, outbox};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use system_tests::System;
use uuid::Uuid;

const ORDERS: usize = 1_000;
const CLIENTS: usize = 8;
const START: i64 = 100_000_000;
/// Generous: the machine is shared and loaded; nothing here asserts a time.
const SETTLE: Duration = Duration::from_secs(120);
const FINAL: [&str; 4] = ["PAID", "PAYMENT_FAILED", "CANCELLED", "REFUNDED"];

/// What a client does with one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Story {
    /// Bought and left alone: PAID.
    Buy,
    /// Cancelled right after the buy, racing pay's answer: pay charges, then refunds: REFUNDED.
    CancelAtOnce,
    /// Cancelled once PAID: REFUNDED.
    CancelWhenPaid,
    /// Cancelled, then the same request again (same key): the first answer again.
    CancelRetried,
    /// Cancelled, then cancelled again with another key: 409.
    CancelTwice,
    /// Carol has no money: PAYMENT_FAILED, and a cancel then is 409.
    NoFunds,
}

impl Story {
    const ALL: [Story; 6] = [
        Story::Buy,
        Story::CancelAtOnce,
        Story::CancelWhenPaid,
        Story::CancelRetried,
        Story::CancelTwice,
        Story::NoFunds,
    ];

    /// The HTTP requests this story makes.
    fn requests(self) -> usize {
        match self {
            Story::Buy => 1,
            Story::CancelAtOnce | Story::CancelWhenPaid | Story::NoFunds => 2,
            Story::CancelRetried | Story::CancelTwice => 3,
        }
    }
}

/// splitmix64: a seeded sequence, so a failing run's stories can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    match std::env::var("ORDERING_SEED") {
        Ok(s) => s.parse().expect("ORDERING_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// One order's plan: its story, buyer and amount.
#[derive(Debug, Clone)]
struct Plan {
    story: Story,
    user: &'static str,
    amount: i64,
}

fn plans(seed: u64) -> Vec<Plan> {
    let mut rng = Rng(seed);
    (0..ORDERS)
        .map(|_| {
            let story = Story::ALL[rng.below(Story::ALL.len() as u64) as usize];
            let user = if story == Story::NoFunds {
                "carol"
            } else {
                "alice"
            };
            Plan {
                story,
                user,
                amount: 100 + rng.below(900) as i64,
            }
        })
        .collect()
}

async fn order_status(sys: &System, id: Uuid) -> String {
    let body: Value = sys
        .http
        .get(format!("{}/orders/{id}", sys.order))
        .send()
        .await
        .expect("GET /orders/{id}")
        .json()
        .await
        .unwrap();
    body["status"].as_str().unwrap().to_string()
}

async fn reaches(sys: &System, id: Uuid, status: &str) {
    test_kit::eventually(&format!("order {id} is {status}"), SETTLE, || async {
        (order_status(sys, id).await == status).then_some(())
    })
    .await;
}

async fn cancel(sys: &System, id: Uuid, key: &str) -> (StatusCode, Value) {
    let res = sys
        .http
        .post(format!("{}/orders/{id}/cancel", sys.order))
        .header("Idempotency-Key", key)
        .send()
        .await
        .expect("POST /orders/{id}/cancel");
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

/// Plays one order's story; returns the order id.
async fn play(sys: &System, plan: &Plan) -> Uuid {
    let res = sys
        .http
        .post(format!("{}/buy", sys.order))
        .json(&json!({ "user_id": plan.user, "item": "book", "amount_cents": plan.amount }))
        .send()
        .await
        .expect("POST /buy");
    assert_eq!(res.status(), StatusCode::CREATED);
    let id: Uuid = res.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let key = Uuid::new_v4().to_string();
    match plan.story {
        Story::Buy => {}
        Story::CancelAtOnce | Story::CancelRetried | Story::CancelTwice => {
            let (code, first) = cancel(sys, id, &key).await;
            assert_eq!(code, StatusCode::ACCEPTED, "{first}");
            let first_status = first["status"].as_str().unwrap();
            assert!(
                ["CANCELLED", "CANCEL_REQUESTED"].contains(&first_status),
                "{first}"
            );
            if plan.story == Story::CancelRetried {
                let (code, again) = cancel(sys, id, &key).await;
                assert_eq!(code, StatusCode::ACCEPTED, "{again}");
                assert_eq!(again["order_id"], first["order_id"], "{again}");
            }
            if plan.story == Story::CancelTwice {
                let (code, err) = cancel(sys, id, &Uuid::new_v4().to_string()).await;
                assert_eq!(code, StatusCode::CONFLICT, "{err}");
                assert_eq!(err["error"]["code"], "order_not_cancellable", "{err}");
            }
        }
        Story::CancelWhenPaid => {
            reaches(sys, id, "PAID").await;
            let (code, body) = cancel(sys, id, &key).await;
            assert_eq!(code, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body["status"], "CANCEL_REQUESTED", "{body}");
        }
        Story::NoFunds => {
            reaches(sys, id, "PAYMENT_FAILED").await;
            let (code, err) = cancel(sys, id, &key).await;
            assert_eq!(code, StatusCode::CONFLICT, "{err}");
            assert_eq!(err["error"]["code"], "order_not_cancellable", "{err}");
        }
    }
    id
}

/// `POST`/`DELETE base/admin/faults/{switch}` with the admin token.
async fn switch(sys: &System, base: &str, method: Method, name: &str, body: Value) {
    let mut request = sys
        .http
        .request(method.clone(), format!("{base}/admin/faults/{name}"))
        .header("authorization", test_kit::admin_bearer());
    if !body.is_null() {
        request = request.json(&body);
    }
    let res = request.send().await.expect("fault switch");
    let status = res.status();
    let state: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{method} {name}: {state}");
}

/// Turns the faults on one after the other until `done`; returns how many it turned on.
async fn faults(sys: &System, done: Arc<AtomicBool>) -> u64 {
    let (order, pay) = (sys.order.clone(), sys.pay.clone());
    // Counts stay below the retry limit (5 attempts): a fault that failed one message five
    // times would make it dead, which is the operator's case, not this test's.
    let schedule: [(&str, &str, Value); 12] = [
        (&pay, "stop_consumer", json!({"seconds": 2})),
        (&order, "pause_relay", json!({"seconds": 2})),
        (&pay, "fail_handler", json!({"count": 3})),
        (&order, "drop_broker_connection", json!({})),
        (&pay, "deliver_twice", json!({"count": 30})),
        (&order, "lose_confirms", json!({"count": 4})),
        (&pay, "drop_broker_connection", json!({})),
        (&order, "fail_handler", json!({"count": 3})),
        (&pay, "hold_ack", json!({"count": 3})),
        (&order, "deliver_twice", json!({"count": 30})),
        (&pay, "lose_confirms", json!({"count": 4})),
        (&order, "hold_ack", json!({"count": 3})),
    ];
    let mut applied = 0;
    for (base, name, body) in schedule.iter().cycle() {
        if done.load(Ordering::Relaxed) {
            break;
        }
        switch(sys, base, Method::POST, name, body.clone()).await;
        applied += 1;
        // Pacing between faults, so each acts on traffic; not a wait for an outcome.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for base in [&order, &pay] {
        for name in message_table::faults::Switch::ALL.map(|s| s.name()) {
            switch(sys, base, Method::DELETE, name, Value::Null).await;
        }
    }
    applied
}

/// `inbox_deliveries_total{outcome="parked"}` of a service: deliveries that came early.
async fn parked_deliveries(base: &str) -> f64 {
    test_kit::metrics::scrape(&format!("{base}/metrics"))
        .await
        .value("inbox_deliveries_total", &[("outcome", "parked")])
}

/// Checks one service's inbox: per aggregate, the applied numbers are 1..n, each row
/// `processed`, its position is n, and n is what the sender numbered (`sent`: aggregate ->
/// highest `aggregate_seq` in the peer's outbox). Returns the rows received and the
/// aggregates whose `processed_at` runs against their numbers: reported, not asserted, as a
/// row applied on arrival has the time of its dedup insert, taken before the position lock
/// that orders it, so that column is no strict witness of the order of application (the
/// business effects are: see the test).
async fn check_inbox(name: &str, db: &sqlx::PgPool, sent: &HashMap<String, i64>) -> (usize, usize) {
    let rows: Vec<Received> = sqlx::query_as(
        "SELECT aggregate_id, aggregate_seq, status, attempts,
                (extract(epoch FROM received_at) * 1000000)::bigint AS received_us,
                (extract(epoch FROM processed_at) * 1000000)::bigint AS processed_us FROM inbox
         WHERE aggregate_id IS NOT NULL
           AND last_error IS DISTINCT FROM 'not handled: its aggregate had applied this number already'
         ORDER BY aggregate_id, aggregate_seq",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut by_aggregate: HashMap<&str, Vec<&Received>> = HashMap::new();
    for row in &rows {
        by_aggregate.entry(&row.aggregate_id).or_default().push(row);
    }
    let positions: HashMap<String, i64> =
        sqlx::query_as("SELECT aggregate_id, applied_seq FROM inbox_sequences")
            .fetch_all(db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        by_aggregate.len(),
        sent.len(),
        "{name}: an inbox row for each aggregate the peer numbered"
    );
    let mut inversions = 0;
    for (agg, msgs) in &by_aggregate {
        let seqs: Vec<i64> = msgs.iter().map(|m| m.aggregate_seq).collect();
        let want: Vec<i64> = (1..=msgs.len() as i64).collect();
        assert_eq!(seqs, want, "{name}: aggregate {agg} applied 1..n, no gap");
        for m in msgs {
            assert_eq!(m.status, "processed", "{name}: {m:?}");
        }
        if msgs
            .windows(2)
            .any(|w| w[0].processed_us > w[1].processed_us)
        {
            let rows: Vec<String> = msgs
                .iter()
                .map(|m| {
                    format!(
                        "#{} attempts {} received_us {} processed_us {:?}",
                        m.aggregate_seq, m.attempts, m.received_us, m.processed_us
                    )
                })
                .collect();
            println!("ordering: {name}: {agg}'s processed_at against its numbers: {rows:?}");
            inversions += 1;
        }
        assert_eq!(
            positions.get(*agg),
            Some(&(msgs.len() as i64)),
            "{name}: {agg}'s position"
        );
        assert_eq!(
            sent.get(*agg),
            Some(&(msgs.len() as i64)),
            "{name}: {agg} applied all the peer sent"
        );
    }
    (rows.len(), inversions)
}

/// An inbox row as the check reads it (times in microseconds since the epoch).
#[derive(Debug, sqlx::FromRow)]
struct Received {
    aggregate_id: String,
    aggregate_seq: i64,
    status: String,
    attempts: i32,
    received_us: i64,
    processed_us: Option<i64>,
}

/// aggregate -> highest `aggregate_seq` in a service's outbox: what it numbered.
async fn numbered(db: &sqlx::PgPool) -> HashMap<String, i64> {
    sqlx::query_as(
        "SELECT aggregate_id, max(aggregate_seq) FROM outbox
         WHERE aggregate_seq IS NOT NULL GROUP BY aggregate_id",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn count(db: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

// Run alone, by its own step of scripts/test.sh: its load (1,000 orders under broker faults,
// a second pay instance) stalled the broker for the tests run beside it, whose connections
// then timed out.
#[ignore = "run alone by scripts/test.sh (cargo test -p system-tests --test api ordering -- --ignored)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_orders_under_faults_are_applied_in_order_and_the_money_adds_up() {
    let seed = seed();
    println!("ordering: seed {seed} (ORDERING_SEED={seed} replays the stories)");
    let plans = plans(seed);
    let amqp = test_kit::test_amqp();
    let sys = Arc::new(system_tests::start_with_faults(&amqp).await);

    let done = Arc::new(AtomicBool::new(false));
    let fault_task = tokio::spawn({
        let (sys, done) = (sys.clone(), done.clone());
        async move { faults(&sys, done).await }
    });
    let next = Arc::new(AtomicU64::new(0));
    // A second pay competes for pay's deliveries (so one order's two messages can be taken
    // by two instances); at each quarter of the run it is stopped and a fresh one started.
    let restarts = tokio::spawn({
        let (sys, next) = (sys.clone(), next.clone());
        async move {
            let mut extra = sys.another_pay().await;
            let mut counters = vec![extra.counters.clone()];
            for quarter in 1..4 {
                while (next.load(Ordering::Relaxed) as usize) < quarter * ORDERS / 4 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                extra.stop().await.expect("pay stops cleanly");
                extra = sys.another_pay().await;
                counters.push(extra.counters.clone());
            }
            (extra, counters)
        }
    });
    let ids = Arc::new(Mutex::new(vec![Uuid::nil(); ORDERS]));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (sys, next, ids, plans) = (sys.clone(), next.clone(), ids.clone(), plans.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= ORDERS {
                        break;
                    }
                    let id = play(&sys, &plans[i]).await;
                    ids.lock().unwrap()[i] = id;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("a client panicked");
    }
    done.store(true, Ordering::Relaxed);
    let (_last_pay, extra_counters) = restarts.await.expect("the restart task panicked");
    let faults_applied = fault_task.await.expect("the fault task panicked");
    let ids = ids.lock().unwrap().clone();
    let story_of: HashMap<Uuid, &Plan> = ids.iter().copied().zip(plans.iter()).collect();

    // Everything settles: final states, outboxes drained, nothing parked or failed.
    let (order_db, pay_db) = (&sys.order_db.pool, &sys.pay_db.pool);
    test_kit::eventually("every order final, every message sent and applied", SETTLE, || async {
        let not_final = count(
            order_db,
            "SELECT count(*) FROM orders WHERE status NOT IN ('PAID','PAYMENT_FAILED','CANCELLED','REFUNDED')",
        )
        .await;
        let mut quiet = not_final == 0;
        for db in [order_db, pay_db] {
            let o = outbox::stats(db).await.unwrap();
            let i = inbox::stats(db).await.unwrap();
            quiet &= o.total() == o.sent && i.failed == 0 && i.dead == 0 && i.parked == 0;
        }
        quiet.then_some(())
    })
    .await;

    // Order per aggregate, both ways.
    let (pay_received, pay_inverted) = check_inbox("pay", pay_db, &numbered(order_db).await).await;
    let (order_received, order_inverted) =
        check_inbox("order", order_db, &numbered(pay_db).await).await;

    // Final states, each as its story allows.
    let statuses: HashMap<Uuid, String> = sqlx::query_as("SELECT id, status FROM orders")
        .fetch_all(order_db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(statuses.len(), ORDERS);
    let mut finals: HashMap<&str, usize> = HashMap::new();
    for (id, status) in &statuses {
        let plan = story_of[id];
        assert!(FINAL.contains(&status.as_str()), "{id}: {status}");
        let allowed: &[&str] = match plan.story {
            Story::Buy => &["PAID"],
            Story::NoFunds => &["PAYMENT_FAILED"],
            Story::CancelWhenPaid => &["REFUNDED"],
            // Pay applies OrderCancelled (2) only after OrderCreated (1): it charged, so it
            // refunds. Taken the other way round, it would have left a tombstone and charged
            // nothing, and the order would stay CANCELLED.
            Story::CancelAtOnce | Story::CancelRetried | Story::CancelTwice => &["REFUNDED"],
        };
        assert!(
            allowed.contains(&status.as_str()),
            "{id} {plan:?}: {status}"
        );
        *finals.entry(status.as_str()).or_default() += 1;
    }

    // Money: payments agree with the orders, refunds only of charges, at most one each.
    let payments: HashMap<Uuid, (String, String, i64)> =
        sqlx::query_as("SELECT order_id, user_id, status, amount_cents FROM payments")
            .fetch_all(pay_db)
            .await
            .unwrap()
            .into_iter()
            .map(|(o, u, s, a): (Uuid, String, String, i64)| (o, (u, s, a)))
            .collect();
    let refunds: Vec<(Uuid, Uuid, i64)> =
        sqlx::query_as("SELECT order_id, payment_id, amount_cents FROM refunds")
            .fetch_all(pay_db)
            .await
            .unwrap();
    let refunded: HashMap<Uuid, i64> = refunds.iter().map(|r| (r.0, r.2)).collect();
    assert_eq!(
        refunded.len(),
        refunds.len(),
        "at most one refund per order"
    );
    for (id, status) in &statuses {
        let payment = payments.get(id).map(|p| p.1.as_str());
        let want = match status.as_str() {
            "PAID" => "COMPLETED",
            "PAYMENT_FAILED" => "FAILED",
            "REFUNDED" => "REFUNDED",
            other => unreachable!("{id}: {other} was refused above"),
        };
        assert_eq!(payment, Some(want), "{id} {status}: its payment");
        assert_eq!(
            refunded.contains_key(id),
            status == "REFUNDED",
            "{id} {status}: a refund exactly for the cancelled paid orders"
        );
        if let Some(amount) = refunded.get(id) {
            assert_eq!(*amount, payments[id].2, "{id}: refund = charge");
        }
    }
    for user in ["alice", "carol"] {
        let charged: i64 = payments
            .values()
            .filter(|p| p.0 == user && p.1 == "COMPLETED")
            .map(|p| p.2)
            .sum();
        let start = if user == "alice" { START } else { 0 };
        let balance: i64 =
            sqlx::query_scalar("SELECT balance_cents FROM accounts WHERE user_id = $1")
                .bind(user)
                .fetch_one(pay_db)
                .await
                .unwrap();
        assert_eq!(balance, start - charged, "{user}'s balance");
    }

    let events: usize = plans.iter().map(|p| p.story.requests()).sum();
    let mut stories: HashMap<String, usize> = HashMap::new();
    for p in &plans {
        *stories.entry(format!("{:?}", p.story)).or_default() += 1;
    }
    let pay_counters = sys.pay_counters.snapshot();
    let (extra_parked, extra_duplicates) = extra_counters
        .iter()
        .map(|c| c.snapshot())
        .fold((0, 0), |(p, d), s| (p + s.parked, d + s.duplicates));
    println!(
        "ordering: {ORDERS} orders, {events} client requests, stories {stories:?}; \
         {faults_applied} faults applied, 3 restarts of the second pay; messages received: \
         pay {pay_received}, order {order_received}; parked on arrival: pay {} (first \
         instance, metric {}) + {extra_parked} (the others), order {}; duplicates dropped by \
         pay {} + {extra_duplicates}; aggregates whose processed_at runs against their \
         numbers: pay {pay_inverted}, order {order_inverted}; final states {finals:?}; \
         refunds {}",
        pay_counters.parked,
        parked_deliveries(&sys.pay).await,
        parked_deliveries(&sys.order).await,
        pay_counters.duplicates,
        refunds.len(),
    );
}
