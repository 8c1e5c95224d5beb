//! The run from start to end: its own state (lock, databases, queues, admin token), the
//! stack, the load and the faults, the checks, the final stop.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

use message_table::amqp::AmqpConfig;
use sqlx::{AssertSqlSafe, Connection, PgConnection, postgres::PgConnectOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    AnyResult, Report,
    args::{Config, FaultKind},
    check::{self, CheckArgs},
    drive::{self, DriveArgs},
    faults::{self, Faults},
    log,
    nodes::Nodes,
    note, poison,
    stack::{INSTANCES, ROLLING, Stack, StackSettings},
};

/// What a run owns, named after it (`chaos`, `chaos-cluster`): two runs of different kinds
/// can go on at once.
struct Own {
    order_db: String,
    pay_db: String,
    exchange: String,
    lock: String,
}

impl Own {
    fn of(name: &str) -> Self {
        let db = name.replace('-', "_");
        Self {
            order_db: format!("lmt_{db}_order"),
            pay_db: format!("lmt_{db}_pay"),
            exchange: format!("lmt.{name}.events"),
            lock: format!("lmt-{name}.lock"),
        }
    }
}

/// `url` with its database replaced by `database` (query parameters kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{server}/{database}{query}")
}

/// The host of a URL (`amqp://user:pass@host:port/vhost` → `host`).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host_port.split(':').next().unwrap_or(host_port),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// One chaos run of a kind at a time on a machine: they share databases and ports.
fn lock(name: &str) -> AnyResult<File> {
    let file = File::create(std::env::temp_dir().join(name))?;
    file.try_lock().map_err(
        |_| "another chaos run is going on on this machine (it uses the same databases and ports)",
    )?;
    Ok(file)
}

/// The broker restart needs RabbitMQ on this machine and `rabbitmqctl` that works.
async fn broker_restart_possible(amqp_url: &str) -> AnyResult<()> {
    let host = host_of(amqp_url);
    let local = matches!(host, "" | "localhost" | "::1") || host.starts_with("127.");
    if !local || !on_path("rabbitmqctl") {
        return Err("broker-restart needs RabbitMQ on this machine and rabbitmqctl; CHAOS_BROKER=0 leaves that fault out".into());
    }
    if !faults::rabbitmqctl(&["status"]).await {
        return Err("rabbitmqctl status fails (broker-restart needs rabbitmqctl, as root or through sudo); CHAOS_BROKER=0 leaves that fault out".into());
    }
    Ok(())
}

/// The cluster of the cluster run, with its three nodes running (it is not started here:
/// `scripts/cluster-test.sh` starts and stops it).
async fn running_cluster(settings: &cluster::Settings) -> AnyResult<cluster::Cluster> {
    let cluster = cluster::Cluster::new(settings.clone())?;
    let c = cluster.clone();
    let running = tokio::task::spawn_blocking(move || {
        cluster::Node::ALL
            .iter()
            .all(|&n| matches!(c.state(n), cluster::NodeState::Running(_)))
            && c.running_nodes(cluster::Node::FIRST).len() == 3
    })
    .await?;
    if !running {
        return Err(
            "the cluster run needs the three nodes running and clustered: scripts/cluster.sh start"
                .into(),
        );
    }
    Ok(cluster)
}

/// `ADMIN_TOKEN`, else the one kept in the run directory, else a new one kept there (only
/// its owner can read it).
fn admin_token(run_dir: &Path) -> AnyResult<String> {
    if let Ok(token) = std::env::var("ADMIN_TOKEN")
        && !token.is_empty()
    {
        return Ok(token);
    }
    let file = run_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&file)
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_string());
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut out = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&file)?;
    writeln!(out, "{token}")?;
    Ok(token)
}

/// The services' binaries are next to this one (`cargo build -p order -p pay -p gateway
/// -p chaos` puts them all in the same `target/<profile>/`).
fn bin_dir() -> AnyResult<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("this binary has no directory")?;
    for name in ["order", "pay", "gateway"] {
        if !dir.join(name).is_file() {
            return Err(format!(
                "{} is missing (cargo build --release -p order -p pay -p gateway -p chaos)",
                dir.join(name).display()
            )
            .into());
        }
    }
    Ok(dir.to_path_buf())
}

/// Drops and creates the run's two databases (the services migrate them as they start).
async fn recreate_databases(admin: &PgConnectOptions, own: &Own) -> AnyResult<()> {
    let mut conn = PgConnection::connect_with(admin).await?;
    // DDL takes no bind parameters; the names are made in this file.
    for db in [&own.order_db, &own.pay_db] {
        let drop = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
        sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(&mut conn)
            .await?;
        let create = format!("CREATE DATABASE \"{db}\"");
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

/// The run's state, the stack, then the run under load; whatever happens, the instances
/// still running are stopped at the end.
pub async fn run(cfg: &Config, report: &Report) -> AnyResult<()> {
    let cli = &cfg.cli;
    let own = Own::of(cfg.name);
    let _lock = lock(&own.lock)?;
    let mut amqp = AmqpConfig::from(cli.amqp.clone());
    amqp.exchange = own.exchange.clone();
    if cfg.kinds.contains(&FaultKind::BrokerRestart) {
        broker_restart_possible(&amqp.url).await?;
    }
    let cluster = if cli.cluster {
        let cluster = running_cluster(&cli.cluster_settings).await?;
        amqp.url = cluster.urls();
        Some(cluster)
    } else {
        None
    };
    let run_dir = cfg.run_dir.clone();
    std::fs::create_dir_all(&run_dir)?;
    let old = [
        "pay1.log",
        "pay2.log",
        "order1.log",
        "order2.log",
        "gateway.log",
        "driver.log",
        "accepted.csv",
        "drive.json",
        "poison.ids",
        "counters.jsonl",
        // What the run wrote when scripts/chaos.sh drove it.
        "poison.log",
        "snapshot.log",
        "check.txt",
        "check.err",
    ];
    for file in old {
        let _ = std::fs::remove_file(run_dir.join(file));
    }
    File::create(run_dir.join("faults.txt"))?;
    let admin_token = admin_token(&run_dir)?;
    let bin_dir = bin_dir()?;

    let order_url = with_database(&cli.database_url, &own.order_db);
    let pay_url = with_database(&cli.database_url, &own.pay_db);
    let admin = PgConnectOptions::from_str(&cli.database_url)?.database("postgres");
    let run_id = format!(
        "{}-{}",
        chrono::Local::now().format("%Y%m%d%H%M%S"),
        std::process::id()
    );
    let pool = cli.db_max_connections.to_string();
    let queue_prefix = format!("{}.{run_id}", cfg.name);
    let pay_queue = format!("{queue_prefix}.pay.order-created");
    let mut env: Vec<(String, String)> = [
        ("ORDER_DATABASE_URL", order_url.clone()),
        ("PAY_DATABASE_URL", pay_url.clone()),
        ("AMQP_URL", amqp.url.clone()),
        ("AMQP_EXCHANGE", amqp.exchange.clone()),
        // Queues per run: whatever an aborted run left in its queues cannot reach this one.
        (
            "ORDER_QUEUE",
            format!("{queue_prefix}.order.payment-results"),
        ),
        ("PAY_QUEUE", pay_queue.clone()),
        ("AMQP_QUEUE_EXPIRES_MS", "600000".into()),
        ("ORDER_DB_MAX_CONNECTIONS", pool.clone()),
        ("PAY_DB_MAX_CONNECTIONS", pool),
        ("NO_COLOR", "1".into()),
        ("ADMIN_TOKEN", admin_token.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if cluster.is_some() {
        // Replicated on the three nodes, whatever the services' default.
        env.push(("AMQP_QUEUE_TYPE".into(), "quorum".into()));
    }
    let mut stack = Stack::new(StackSettings {
        bin_dir,
        run_dir: run_dir.clone(),
        env,
        port_base: cfg.port_base,
        gateway_multi: cli.gateway_multi,
        ready_within: Duration::from_secs(cli.ready_secs),
        stop_within: Duration::from_secs(cli.stop_secs),
    })?;
    let busy = stack.ports_in_use();
    if !busy.is_empty() {
        return Err(format!(
            "{} in use (a chaos run killed hard leaves its processes: look for them, or set CHAOS_PORT_BASE)",
            busy.join(", ")
        )
        .into());
    }
    recreate_databases(&admin, &own).await?;

    let faults = Faults {
        file: run_dir.join("faults.txt"),
        run_dir: run_dir.clone(),
        admin_http: crate::stats::client(Duration::from_secs(2), &admin_token)?,
        admin,
        databases: [own.order_db.clone(), own.pay_db.clone()],
        kill_down: Duration::from_secs(cli.kill_down_secs),
        broker_down: Duration::from_secs(cli.broker_down_secs),
        injected: BTreeMap::new(),
        nodes: cluster
            .map(|c| {
                let down = Duration::from_secs(cli.node_down_secs);
                Nodes::new(c, queue_prefix, pay_queue, down)
            })
            .transpose()?,
    };
    let checks = CheckArgs {
        dir: run_dir.clone(),
        order_database_url: order_url,
        pay_database_url: pay_url,
        admin_token,
        instances: stack.instances(),
        initial_balances: BTreeMap::new(),
        deadline: Duration::from_secs(cli.converge_secs),
        min_each: cfg.min_each,
        kinds: cfg.kinds.iter().map(ToString::to_string).collect(),
    };
    log(&format!(
        "{} run: logs and results in {}",
        cfg.mode,
        run_dir.display()
    ));
    let result = under_load(cfg, report, &mut stack, faults, checks, &amqp, &run_id).await;
    stack.stop_all().await;
    result
}

/// Sleeps `secs` under load, returning early when the driver has finished.
async fn sleep_under_load(secs: u64, driver: &JoinHandle<AnyResult<()>>) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until && !driver.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn under_load(
    cfg: &Config,
    report: &Report,
    stack: &mut Stack,
    mut faults: Faults,
    mut checks: CheckArgs,
    amqp: &AmqpConfig,
    run_id: &str,
) -> AnyResult<()> {
    let cli = &cfg.cli;
    // One instance of each first (each migrates its database), then the second ones.
    for name in ["pay1", "order1"] {
        stack.start(name)?;
    }
    if !stack.wait_ready(&["pay1", "order1"]).await {
        return Err(format!(
            "pay1/order1 did not become ready (see {}, {})",
            stack.log_path("pay1").display(),
            stack.log_path("order1").display()
        )
        .into());
    }
    for name in ["pay2", "order2", "gateway"] {
        stack.start(name)?;
    }
    let ready = stack.wait_ready(&INSTANCES).await;
    report.check(
        ready,
        &format!(
            "the stack starts: 2 order, 2 pay instances and the gateway ready (routes {})",
            stack.gateway_routes()
        ),
        || stack.not_ready.join(" "),
    );
    if !ready {
        return Ok(());
    }

    let mut pay_db = PgConnection::connect(&checks.pay_database_url).await?;
    let balances: Vec<(String, i64)> =
        sqlx::query_as("SELECT user_id, balance_cents FROM accounts ORDER BY user_id")
            .fetch_all(&mut pay_db)
            .await?;
    let _ = pay_db.close().await;
    if balances.is_empty() {
        return Err("cannot read the initial balances".into());
    }
    let listed: Vec<String> = balances.iter().map(|(u, c)| format!("{u}={c}")).collect();
    note(&format!("initial balances: {}", listed.join(",")));
    checks.initial_balances = balances.into_iter().collect();

    // The load and the faults.
    let targets = stack.driver_targets();
    let stop = CancellationToken::new();
    let drive_args = DriveArgs::new(
        targets.clone(),
        cfg.rate,
        cfg.orders,
        cfg.run_dir.clone(),
        format!("chaos-{run_id}"),
    );
    let driver = tokio::spawn({
        let stop = stop.clone();
        async move { drive::drive(&drive_args, stop).await }
    });
    note(&format!(
        "driving {} orders/s to {}{}",
        cfg.rate,
        targets.join(","),
        if cfg.orders > 0 {
            format!(", {} orders", cfg.orders)
        } else {
            String::new()
        }
    ));
    if cfg.poison > 0 {
        match poison::poison(
            amqp,
            poison::PAY_ROUTING_KEY,
            cfg.poison,
            &cfg.run_dir.join("poison.ids"),
        )
        .await
        {
            Ok(()) => note(&format!(
                "published {} poison messages to pay (expected dead in pay's inbox)",
                cfg.poison
            )),
            Err(e) => report.check(false, "poison messages published", || e.to_string()),
        }
    }

    sleep_under_load(cli.warmup_secs, &driver).await;
    let mut rounds = 0;
    let mut injected = 0;
    loop {
        for &kind in &cfg.kinds {
            let started = Instant::now();
            let detail = faults.inject(kind, stack).await?;
            // Back to normal before the next one: every instance ready.
            stack.wait_ready(&INSTANCES).await;
            injected += 1;
            note(&format!(
                "fault {injected}: {}, {detail}, all ready again after {} s",
                stack.current,
                started.elapsed().as_secs()
            ));
            sleep_under_load(cfg.interval_secs, &driver).await;
        }
        rounds += 1;
        if rounds < cfg.min_each {
            continue;
        }
        // Long run: more rounds while orders are still being placed.
        if cfg.orders > 0 && !driver.is_finished() {
            continue;
        }
        break;
    }
    stack.current = "the end of the load".into();
    stack.check_alive().await?;
    // Without a count of orders, the load stops after the tail; with one, at the count.
    if cfg.orders == 0 {
        sleep_under_load(cfg.tail_secs, &driver).await;
        stop.cancel();
    }
    let driven = match driver.await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let driver_log = cfg.run_dir.join("driver.log");
    report.check(driven.is_ok(), "the load generator ran to the end", || {
        format!("{}; see {}", driven.unwrap_err(), driver_log.display())
    });
    let log_text = std::fs::read_to_string(&driver_log).unwrap_or_default();
    let lines: Vec<&str> = log_text.lines().collect();
    for line in &lines[lines.len().saturating_sub(2)..] {
        note(line);
    }
    report.check(
        stack.not_ready.is_empty(),
        &format!(
            "after every fault, every instance was ready again within {} s",
            cli.ready_secs
        ),
        || stack.not_ready.join(" "),
    );

    // Convergence and invariants, while the stack still runs.
    log(&format!(
        "waiting (up to {} s) for the system to converge, then checking",
        cli.converge_secs
    ));
    if let Err(e) = check::check(&checks, report).await {
        report.check(false, "the invariant checks ran", || e.to_string());
    }
    if let Some(nodes) = &faults.nodes {
        match nodes.dead_letters().await {
            Ok(queues) => report.check(
                !queues.is_empty() && queues.iter().all(|(_, n)| *n == 0),
                &format!(
                    "the dead-letter queues are empty ({} of them)",
                    queues.len()
                ),
                || format!("{queues:?}"),
            ),
            Err(e) => report.check(false, "the dead-letter queues are read", || e.to_string()),
        }
    }

    // The processes themselves.
    stack.current = "the final stop".into();
    stack.check_alive().await?;
    for name in ROLLING {
        stack.stop(name).await;
    }
    report.check(
        stack.unexpected_exits.is_empty(),
        "no instance exited on its own",
        || stack.unexpected_exits.join(" "),
    );
    report.check(
        stack.unclean_stops.is_empty(),
        &format!(
            "every graceful stop (SIGTERM) ended with exit status 0 within {} s",
            cli.stop_secs
        ),
        || stack.unclean_stops.join(" "),
    );
    let panicked = stack.panicked();
    report.check(panicked.is_empty(), "no instance panicked", || {
        format!("'panicked at' in {}", panicked.join(","))
    });
    Ok(())
}
