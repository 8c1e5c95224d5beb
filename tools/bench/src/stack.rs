//! The system under test as the services' own binaries (`pay`, `order`, `gateway`, from the
//! same `target/<profile>/` as this one), each a child process with its own fresh database:
//! the only way to read a service's own peak RSS and its time to ready, and it keeps the load
//! generator (this process) apart from the services, so this process's CPU time is the
//! generator's. The peer (RustStream, `peer-ruststream`) runs the same way: its order side and
//! its pay side, two processes on two fresh databases, on the same broker and queue type.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use message_table::amqp::{AmqpConfig, QueueType};
use test_kit::{ServiceProcess, TestDb, TestQueue};

use crate::{generator, stats};

/// One service's footprint: its peak RSS so far and how long it took to be ready.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Footprint {
    pub service: String,
    pub ready_ms: f64,
    pub peak_rss_mib: f64,
}

/// Which system a stack runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum System {
    /// This project's services.
    This,
    /// The same flow on RustStream's outbox and RabbitMQ broker (`peer-ruststream`).
    RustStream,
}

impl System {
    /// In the order a section measures them.
    pub const ALL: [System; 2] = [System::This, System::RustStream];

    pub fn name(self) -> &'static str {
        match self {
            System::This => "this system",
            System::RustStream => "RustStream",
        }
    }

    /// Whether this run measures the system: this one always; the peer unless `BENCH_PEERS`
    /// (default `ruststream`) leaves it out (`BENCH_PEERS=none`).
    pub fn wanted(self) -> bool {
        match self {
            System::This => true,
            System::RustStream => std::env::var("BENCH_PEERS")
                .map_or(true, |v| v.split(',').any(|s| s.trim() == "ruststream")),
        }
    }

    /// The first `n` of [`Self::ALL`] that this run measures.
    pub fn measured(n: usize) -> Vec<System> {
        Self::ALL[..n]
            .iter()
            .copied()
            .filter(|s| s.wanted())
            .collect()
    }
}

/// The queue type the queue_type section asks for; otherwise the run's own.
static QUEUE_TYPE: Mutex<Option<QueueType>> = Mutex::new(None);

/// Makes the stacks started from now on declare `queue_type` queues (`None`: the run's own).
pub fn use_queue_type(queue_type: Option<QueueType>) {
    *QUEUE_TYPE.lock().unwrap_or_else(|e| e.into_inner()) = queue_type;
}

/// The run's queue type: `AMQP_QUEUE_TYPE`, read as the services read it (quorum when unset),
/// so `AMQP_QUEUE_TYPE=classic scripts/bench.sh` measures every section on classic queues.
fn queue_type() -> QueueType {
    QUEUE_TYPE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(|| {
            std::env::var("AMQP_QUEUE_TYPE")
                .map_or(Ok(QueueType::default()), |v| v.parse())
                .unwrap_or_else(|e| panic!("AMQP_QUEUE_TYPE: {e}"))
        })
}

/// Pay (with the benchmark's accounts), order and optionally the gateway, on a unique
/// exchange of the local broker, with the services' default settings; or the peer's two
/// sides, as [`System`] says.
pub struct Stack {
    pub system: System,
    pub order_db: TestDb,
    pub pay_db: TestDb,
    pub amqp: AmqpConfig,
    pub pay: ServiceProcess,
    pub order: Option<ServiceProcess>,
    pub gateway: Option<ServiceProcess>,
    ready: Vec<(String, Duration)>,
    queues: Queues,
    /// Holds a channel to delete the (durable) exchange at the end.
    broker: TestQueue,
}

impl Stack {
    /// Both databases (pay's seeded with the accounts) and pay running; order is started
    /// by [`Stack::start_order`], so a scenario can write a backlog first.
    pub async fn with_pay(system: System) -> Self {
        let amqp = AmqpConfig {
            // The binaries declare a durable exchange; `finish` deletes it.
            exchange_auto_delete: false,
            queue_type: queue_type(),
            ..test_kit::test_amqp()
        };
        let broker = TestQueue::bind(&amqp, &[]).await;
        let order_queue = test_kit::unique_name("bench.order");
        let (order_db, pay_db) = match system {
            System::This => {
                // Order's reply queue exists before pay replies: order's relay and consumer
                // start together, and a reply published before the consumer declared its
                // queue would be unroutable (retried with backoff: a stall that is the
                // benchmark's, not the system's). It also takes the replies when order is
                // not running.
                broker
                    .declare(&amqp, &order_queue, messages::ORDER_QUEUE.routing_keys)
                    .await;
                (
                    TestDb::new(&order::MIGRATOR).await,
                    TestDb::new(&pay::MIGRATOR).await,
                )
            }
            System::RustStream => (
                TestDb::new(&peer_ruststream::ORDER_MIGRATOR).await,
                TestDb::new(&peer_ruststream::PAY_MIGRATOR).await,
            ),
        };
        generator::seed_accounts(&pay_db.pool).await;
        let queues = Queues {
            order: order_queue,
            pay: test_kit::unique_name("bench.pay"),
        };
        let mut ready = Vec::new();
        let pay = start_side(system, "pay", &pay_db, &amqp, &queues, None, &mut ready).await;
        Stack {
            system,
            order_db,
            pay_db,
            amqp,
            pay,
            order: None,
            gateway: None,
            ready,
            queues,
            broker,
        }
    }

    /// Pay and order running.
    pub async fn running(system: System) -> Self {
        let mut stack = Self::with_pay(system).await;
        stack.start_order().await;
        stack
    }

    pub async fn start_order(&mut self) {
        self.order = Some(self.another_order().await);
    }

    /// One more order instance on the same database and queue (as a scaled-out
    /// deployment); the caller owns it.
    pub async fn another_order(&mut self) -> ServiceProcess {
        let pay = Some(self.pay.base.as_str());
        let (db, amqp, queues) = (&self.order_db, &self.amqp, &self.queues);
        start_side(self.system, "order", db, amqp, queues, pay, &mut self.ready).await
    }

    /// A writer of this stack's orders, as its system writes them, for `producers` at once.
    pub async fn writer(&self, producers: usize) -> generator::Writer {
        match self.system {
            System::This => generator::Writer::direct(&self.order_db.url, producers).await,
            System::RustStream => generator::Writer::peer(&self.order_db.url, producers).await,
        }
    }

    pub async fn start_gateway(&mut self) {
        let routes = format!("/order={},/pay={}", self.order_url(), self.pay.base);
        let env = vec![("GATEWAY_ROUTES", routes), ("RUST_LOG", "warn".into())];
        let gateway = start(&mut self.ready, "gateway", "gateway", "GATEWAY_ADDR", &env).await;
        self.gateway = Some(gateway);
    }

    pub fn order_url(&self) -> &str {
        &self.order.as_ref().expect("order is running").base
    }

    pub fn gateway_url(&self) -> &str {
        &self.gateway.as_ref().expect("the gateway is running").base
    }

    /// Stops pay (SIGTERM), for a scenario that fills its queue while it is down.
    pub async fn stop_pay(&mut self) {
        self.pay.terminate().await;
    }

    pub async fn restart_pay(&mut self) {
        let started = Instant::now();
        self.pay.restart().await;
        self.ready.push(("pay".into(), started.elapsed()));
    }

    /// Each running service's peak RSS so far and its (first) time to ready.
    pub fn footprints(&self) -> Vec<Footprint> {
        let running = [
            ("pay", Some(&self.pay)),
            ("order", self.order.as_ref()),
            ("gateway", self.gateway.as_ref()),
        ];
        running
            .into_iter()
            .filter_map(|(name, process)| {
                let pid = process?.pid()?;
                let ready = self.ready.iter().find(|(n, _)| n == name)?.1;
                Some(Footprint {
                    service: match self.system {
                        System::This => name.into(),
                        System::RustStream => format!("{} {name}", self.system.name()),
                    },
                    ready_ms: ready.as_secs_f64() * 1e3,
                    peak_rss_mib: stats::peak_rss_mib(pid)?,
                })
            })
            .collect()
    }

    /// Payments committed in pay's database so far.
    pub async fn payments(&self) -> i64 {
        match self.system {
            System::This => count(&self.pay_db, "SELECT count(*) FROM payments").await,
            System::RustStream => peer_ruststream::payments(&self.pay_db.pool).await,
        }
    }

    /// Orders still waiting for their payment (read on the partial index of pending
    /// orders, which shrinks as the stack works: cheap to poll).
    pub async fn pending(&self) -> i64 {
        if self.system == System::RustStream {
            return peer_ruststream::pending(&self.order_db.pool).await;
        }
        let sql = format!(
            "SELECT count(*) FROM orders WHERE {}",
            order::status::PENDING
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.order_db.pool)
            .await
            .unwrap_or(0)
    }

    /// Every message table's rows by status, and the orders still pending: what a stalled
    /// scenario prints, so a stall says where the messages are.
    pub async fn diagnose(&self) -> String {
        use message_table::{inbox, outbox};
        if self.system == System::RustStream {
            return format!(
                "RustStream: {} payments, {} orders pending",
                self.payments().await,
                self.pending().await
            );
        }
        let mut out = String::new();
        for (name, db) in [("order", &self.order_db), ("pay", &self.pay_db)] {
            let o = outbox::stats(&db.pool).await;
            let i = inbox::stats(&db.pool).await;
            out += &format!("{name}: outbox {o:?}, inbox {i:?}\n");
        }
        let stuck: Vec<(uuid::Uuid,)> =
            sqlx::query_as("SELECT id FROM orders WHERE status = $1 ORDER BY created_at LIMIT 5")
                .bind(order::OrderStatus::PendingPayment)
                .fetch_all(&self.order_db.pool)
                .await
                .unwrap_or_default();
        out += &format!("first pending orders: {stuck:?}");
        out
    }

    /// Stops the services and deletes the exchange (the databases go with their `TestDb`).
    pub async fn finish(mut self) {
        for process in [
            self.gateway.as_mut(),
            self.order.as_mut(),
            Some(&mut self.pay),
        ]
        .into_iter()
        .flatten()
        {
            if process.pid().is_some() {
                process.terminate().await;
            }
        }
        if self.system == System::RustStream {
            for queue in [&self.queues.order, &self.queues.pay] {
                self.broker.delete_queue(queue).await;
            }
        }
        self.broker.delete_exchange(&self.amqp).await;
    }
}

async fn count(db: &TestDb, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
}

/// order's or pay's variables (`side`): its database, the broker, its own queue, quiet logs.
fn service_env(
    side: &str,
    db: &TestDb,
    amqp: &AmqpConfig,
    queue: &str,
) -> Vec<(&'static str, String)> {
    let (database, queue_var) = match side {
        "pay" => ("PAY_DATABASE_URL", "PAY_QUEUE"),
        _ => ("ORDER_DATABASE_URL", "ORDER_QUEUE"),
    };
    vec![
        (database, db.url.clone()),
        (queue_var, queue.into()),
        ("AMQP_URL", amqp.url.clone()),
        ("AMQP_EXCHANGE", amqp.exchange.clone()),
        ("AMQP_QUEUE_EXPIRES_MS", "120000".into()),
        ("AMQP_QUEUE_TYPE", amqp.queue_type.to_string()),
        ("RUST_LOG", "warn".into()),
    ]
}

/// The stack's two queues.
struct Queues {
    /// The queue order consumes pay's replies from (this system's is declared before
    /// anything runs).
    order: String,
    /// Pay's (the peer's are deleted at the end: it declares them without an expiry).
    pay: String,
}

/// Starts one side (`order` or `pay`) of `system` on `db` and records how long it took from
/// spawn to `/readyz` answering 200. This system's order is given pay's address.
async fn start_side(
    system: System,
    side: &str,
    db: &TestDb,
    amqp: &AmqpConfig,
    queues: &Queues,
    pay: Option<&str>,
    ready: &mut Vec<(String, Duration)>,
) -> ServiceProcess {
    let queue = if side == "pay" {
        &queues.pay
    } else {
        &queues.order
    };
    let (bin, addr_var, env) = match system {
        System::This => {
            let mut env = service_env(side, db, amqp, queue);
            if let Some(pay) = pay {
                env.push(("ORDER_PAY_URL", pay.to_string()));
            }
            (side, format!("{}_ADDR", side.to_uppercase()), env)
        }
        System::RustStream => {
            let env = vec![
                ("PEER_ROLE", side.to_string()),
                ("DATABASE_URL", db.url.clone()),
                ("AMQP_URL", amqp.url.clone()),
                ("PEER_EXCHANGE", amqp.exchange.clone()),
                ("PEER_ORDER_QUEUE", queues.order.clone()),
                ("PEER_PAY_QUEUE", queues.pay.clone()),
                ("PEER_QUEUE_TYPE", amqp.queue_type.to_string()),
                ("RUST_LOG", "warn".into()),
            ];
            ("peer-ruststream", "PEER_ADDR".to_string(), env)
        }
    };
    start(ready, side, bin, &addr_var, &env).await
}

/// Starts `bin` and records how long it took from spawn to `/readyz` answering 200.
async fn start(
    ready: &mut Vec<(String, Duration)>,
    name: &str,
    bin: &str,
    addr_var: &str,
    env: &[(&str, String)],
) -> ServiceProcess {
    let started = Instant::now();
    let process = ServiceProcess::start(&test_kit::service_binary(bin), addr_var, env).await;
    ready.push((name.into(), started.elapsed()));
    process
}
