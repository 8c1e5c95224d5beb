//! What every service that sends and receives messages runs, wired once: the outbox relay
//! and its resend scheduler, the inbox consumer and its retry sweeper, the HTTP server,
//! readiness, and an orderly shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, response::Response};
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    amqp::{AmqpConfig, BrokerStatus},
    db,
    inbox::{
        Inbox, InboxConfig, InboxCounters, MessageHandler, consumer::InboxConsumer,
        retry_sweeper::RetrySweeper,
    },
    outbox::{OutboxConfig, relay::Relay, resend_scheduler::ResendScheduler},
};

/// The messaging side of a service.
#[derive(Debug, Clone)]
pub struct MessagingConfig {
    pub amqp: AmqpConfig,
    pub outbox: OutboxConfig,
    pub inbox: InboxConfig,
    /// The queue this service consumes, and the routing keys bound to it.
    pub queue: String,
    pub routing_keys: Vec<String>,
}

/// The four background workers, built but not yet started.
pub struct Messaging {
    counters: Arc<InboxCounters>,
    relay: Relay,
    scheduler: ResendScheduler,
    consumer: InboxConsumer,
    sweeper: RetrySweeper,
}

/// What `/readyz` needs to know.
#[derive(Clone)]
pub struct Readiness {
    pool: PgPool,
    publisher: BrokerStatus,
    consumer: BrokerStatus,
}

impl Readiness {
    /// 200 when the database answers and both broker connections are up, else 503.
    pub async fn respond(&self) -> Response {
        let database = db::ping(&self.pool).await;
        crate::http::readiness(&[
            ("database", database),
            ("broker_publisher", self.publisher.is_connected()),
            ("broker_consumer", self.consumer.is_connected()),
        ])
    }
}

impl Messaging {
    /// `name` labels the AMQP connections (`<name>-relay`, `<name>-consumer`).
    pub fn new(
        pool: PgPool,
        handler: Arc<dyn MessageHandler>,
        cfg: &MessagingConfig,
        name: &str,
    ) -> Self {
        let relay = Relay::new(
            pool.clone(),
            cfg.amqp.clone(),
            cfg.outbox.clone(),
            format!("{name}-relay"),
        );
        let scheduler = ResendScheduler::new(pool.clone(), cfg.outbox.clone(), relay.wake_handle());
        let inbox = Inbox::new(pool, handler, cfg.inbox.clone());
        let keys: Vec<&str> = cfg.routing_keys.iter().map(String::as_str).collect();
        let consumer = InboxConsumer::new(
            inbox.clone(),
            cfg.amqp.clone(),
            cfg.queue.clone(),
            &keys,
            format!("{name}-consumer"),
        );
        let sweeper = RetrySweeper::new(&inbox);
        Self {
            counters: inbox.counters(),
            relay,
            scheduler,
            consumer,
            sweeper,
        }
    }

    pub fn inbox_counters(&self) -> Arc<InboxCounters> {
        self.counters.clone()
    }

    pub fn readiness(&self, pool: PgPool) -> Readiness {
        Readiness {
            pool,
            publisher: self.relay.status(),
            consumer: self.consumer.status(),
        }
    }

    fn spawn(self, token: &CancellationToken) -> JoinSet<()> {
        let mut set = JoinSet::new();
        set.spawn(self.relay.run(token.clone()));
        set.spawn(self.scheduler.run(token.clone()));
        set.spawn(self.consumer.run(token.clone()));
        set.spawn(self.sweeper.run(token.clone()));
        set
    }
}

/// Serves `router` on `listener` and runs the workers until `shutdown` resolves. Then, in
/// order: stop accepting HTTP and finish requests in flight (no new outbox rows), stop the
/// workers (the relay finishes its window, the consumer its deliveries), and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    messaging: Messaging,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let mut workers = messaging.spawn(&token);
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown);
    let result = server.await;
    tracing::info!("HTTP server stopped; stopping workers");
    token.cancel();
    let drain = async { while workers.join_next().await.is_some() {} };
    if tokio::time::timeout(WORKER_DRAIN, drain).await.is_err() {
        tracing::warn!(
            "workers did not stop within {WORKER_DRAIN:?}; leases and redelivery cover what they held"
        );
    }
    Ok(result?)
}

/// How long shutdown waits for workers (a relay may wait for one confirm window).
const WORKER_DRAIN: Duration = Duration::from_secs(15);
