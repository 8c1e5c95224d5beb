//! What every service that sends and receives messages runs, wired once: its database
//! (migrated at start-up), the outbox relay and its resend scheduler, the inbox consumer
//! and its retry sweeper, the HTTP server with the standard endpoints (`/metrics` among
//! them), readiness, and an orderly shutdown. A service brings only its routes and its message
//! handler, and, if it has any, its own workers and `/admin` routes ([`Extras`]).

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    middleware,
    response::Response,
    routing::get,
};
use prometheus_client::registry::Registry;
use sqlx::{PgPool, migrate::Migrator};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use common::admin::AdminAuth;

use message_table::{
    amqp::{self, AmqpConfig, BrokerLink, DeclareError, QueueType},
    db,
    faults::Faults,
    inbox::{
        Inbox, InboxConfig, InboxCounters, MessageHandler, consumer::InboxConsumer,
        retry_sweeper::RetrySweeper,
    },
    metrics::MessageTableMetrics,
    outbox::{
        OutboxConfig,
        relay::{Relay, Relays},
        resend_scheduler::ResendScheduler,
    },
    retention::{RetentionConfig, RetentionRunner},
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
    pub retention: RetentionConfig,
    /// `DEMO_FAULTS`: the teaching fault switches at `/admin/faults` ([`crate::faults`]).
    pub demo_faults: bool,
    /// `RABBITMQ_MANAGEMENT_URL`: where `/admin/queue` reads the unacked count.
    pub management_url: Option<String>,
}

impl MessagingConfig {
    /// Every rule, of each part and across parts (see
    /// [`message_table::retention::validate`]), with messages naming the variables. The
    /// one check: [`Service::build`] runs it, whether the config came from the environment
    /// ([`crate::settings`]) or was built in code.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.amqp.validate()?;
        self.outbox.validate()?;
        self.inbox.validate()?;
        self.retention.validate()?;
        message_table::retention::validate(&self.outbox, &self.inbox)
    }
}

/// The background workers, built but not yet started.
struct Messaging {
    counters: Arc<InboxCounters>,
    faults: Faults,
    relays: Relays,
    scheduler: ResendScheduler,
    consumer: InboxConsumer,
    /// The consumer of the dead-letter queue (quorum queues only).
    dead_letters: Option<InboxConsumer>,
    sweeper: RetrySweeper,
    retention: RetentionRunner,
}

/// What `/readyz` needs to know.
#[derive(Clone)]
struct Readiness {
    pool: PgPool,
    /// One per relay.
    publishers: Vec<BrokerLink>,
    consumer: BrokerLink,
    /// Shown with its node, not a check: without it messages still flow.
    dead_letters: Option<BrokerLink>,
}

impl Readiness {
    /// 200 when the database answers and every broker connection is up, else 503; with the
    /// node each connection is on.
    async fn respond(&self) -> Response {
        let database = db::ping(&self.pool).await;
        common::http::readiness(
            &[
                ("database", database),
                (
                    "broker_publisher",
                    self.publishers.iter().all(BrokerLink::is_connected),
                ),
                ("broker_consumer", self.consumer.is_connected()),
            ],
            &self
                .links()
                .map(|l| (l.name().to_string(), l.node()))
                .collect::<Vec<_>>(),
        )
    }

    /// Every broker connection of the service.
    fn links(&self) -> impl Iterator<Item = &BrokerLink> {
        self.publishers
            .iter()
            .chain([&self.consumer])
            .chain(self.dead_letters.as_ref())
    }
}

impl Messaging {
    /// `name` labels the AMQP connections (`<name>/relay`, `<name>/consumer`). Every
    /// worker counts into `metrics`. The relay and the resend scheduler work on
    /// `relay_pool` ([`db::relay_pool`]: asynchronous commit), everything else on `pool`.
    fn new(
        pool: PgPool,
        relay_pool: PgPool,
        handler: Arc<dyn MessageHandler>,
        cfg: &MessagingConfig,
        name: &str,
        metrics: Arc<MessageTableMetrics>,
    ) -> Self {
        let faults = if cfg.demo_faults {
            Faults::on()
        } else {
            Faults::off()
        };
        let relay = Relay::new(
            relay_pool.clone(),
            cfg.amqp.clone(),
            cfg.outbox.clone(),
            format!("{name}/relay"),
        )
        .with_metrics(metrics.clone())
        .with_faults(faults.clone());
        let relays = Relays::new(relay, cfg.outbox.relays);
        let scheduler = ResendScheduler::new(relay_pool, cfg.outbox.clone(), relays.wake_handle());
        let retention =
            RetentionRunner::new(pool.clone(), &cfg.outbox, &cfg.inbox, cfg.retention.clone())
                .with_metrics(metrics.clone());
        let inbox = Inbox::new(pool, handler, cfg.inbox.clone())
            .with_metrics(metrics)
            .with_faults(faults.clone());
        let keys: Vec<&str> = cfg.routing_keys.iter().map(String::as_str).collect();
        let consumer = InboxConsumer::new(
            inbox.clone(),
            cfg.amqp.clone(),
            cfg.queue.clone(),
            &keys,
            format!("{name}/consumer"),
        );
        let dead_letters = (cfg.amqp.queue_type == QueueType::Quorum)
            .then(|| consumer.dead_letters(format!("{name}/dead-letters")));
        let sweeper = RetrySweeper::new(&inbox);
        Self {
            counters: inbox.counters(),
            faults,
            relays,
            scheduler,
            consumer,
            dead_letters,
            sweeper,
            retention,
        }
    }

    fn inbox_counters(&self) -> Arc<InboxCounters> {
        self.counters.clone()
    }

    fn readiness(&self, pool: PgPool) -> Readiness {
        Readiness {
            pool,
            publishers: self.relays.broker_links(),
            consumer: self.consumer.broker_link(),
            dead_letters: self.dead_letters.as_ref().map(InboxConsumer::broker_link),
        }
    }

    fn spawn(self, token: &CancellationToken, extra: Vec<Worker>) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for worker in extra {
            set.spawn(worker(token.clone()));
        }
        set.spawn(self.relays.run(token.clone()));
        set.spawn(self.scheduler.run(token.clone()));
        set.spawn(self.consumer.run(token.clone()));
        if let Some(dead_letters) = self.dead_letters {
            set.spawn(dead_letters.run(token.clone()));
        }
        set.spawn(self.sweeper.run(token.clone()));
        set.spawn(self.retention.run(token.clone()));
        set
    }
}

/// Serves `router` on `listener` and runs the workers until `shutdown` resolves. Then, in
/// order: stop accepting HTTP and finish requests in flight (no new outbox rows), stop the
/// workers (the relay finishes its window, the consumer its deliveries), and return.
async fn serve(
    listener: TcpListener,
    router: Router,
    messaging: Messaging,
    extra_workers: Vec<Worker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let mut workers = messaging.spawn(&token, extra_workers);
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

/// Declares the service's queue once before anything runs, so a queue that exists with
/// other arguments (a classic one, where quorum is now the default) stops the start-up with
/// what to do, instead of a consumer retrying a refused declaration for ever. A broker that
/// cannot be reached is no reason not to start: the consumer declares the queue when it is
/// back (and says so, as an error, if the declaration is refused then).
async fn declare_at_start_up(cfg: &MessagingConfig, service: &str) -> anyhow::Result<()> {
    let keys: Vec<&str> = cfg.routing_keys.iter().map(String::as_str).collect();
    let declared = async {
        let conn = amqp::connect(&cfg.amqp, &format!("{service}/declare")).await?;
        let channel = conn.create_channel().await?;
        let declared = amqp::declare_queue(&channel, &cfg.amqp, &cfg.queue, &keys).await;
        let _ = conn.close(200, "declared".into()).await;
        anyhow::Ok(declared?)
    };
    // A black-holed broker must not hold the start-up for a connect timeout per address.
    let declared = tokio::time::timeout(START_UP_DECLARE_TIMEOUT, declared)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "timed out after {START_UP_DECLARE_TIMEOUT:?}"
            ))
        });
    match declared {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.downcast_ref(), Some(DeclareError::Incompatible { .. })) => {
            Err(anyhow::anyhow!("cannot start: {e}"))
        }
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "the broker is not reachable at start-up; the consumer declares the queue once it is"
            );
            Ok(())
        }
    }
}

const START_UP_DECLARE_TIMEOUT: Duration = Duration::from_secs(5);

/// What `GET /openapi.json` serves: the service's own document with what every service
/// with message tables has, and the fault switches only when they exist.
fn openapi_document(own: utoipa::openapi::OpenApi, demo_faults: bool) -> serde_json::Value {
    use utoipa::OpenApi;
    let mut doc = common::openapi::with_standard(own);
    doc.merge(crate::admin::AdminDoc::openapi());
    if demo_faults {
        doc.merge(crate::faults::FaultsDoc::openapi());
    }
    common::openapi::to_json(&doc)
}

/// How long shutdown waits for workers (a relay may wait for one confirm window).
const WORKER_DRAIN: Duration = Duration::from_secs(15);

/// Where a service listens, its database and its messaging: what order and pay are
/// configured with (from their settings, or built in code by tests).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Listen address; port 0 picks a free port (tests).
    pub addr: String,
    pub database_url: String,
    pub db_max_connections: u32,
    pub messaging: MessagingConfig,
    /// `ADMIN_TOKEN`: who may call `/admin` (off: every admin route is a 404).
    pub admin: AdminAuth,
}

/// What a service is made of, besides its configuration, routes and handler.
pub struct ServiceSpec {
    /// Names the AMQP connections and the logs.
    pub name: &'static str,
    /// The service's own migrations (the message tables' run first).
    pub migrator: &'static Migrator,
    /// Request bodies above this are refused with 413.
    pub max_body_bytes: usize,
    /// The service's own OpenAPI document (its routes and its extra admin routes); served at
    /// `GET /openapi.json` with the standard endpoints and the message tables' admin routes
    /// (and `/admin/faults` with `DEMO_FAULTS`) merged in.
    pub openapi: fn() -> utoipa::openapi::OpenApi,
    /// What the service adds to the standard workers and `/admin` routes, if anything.
    pub extras: Option<ExtrasBuilder>,
}

/// A background task of a service: runs until the token is cancelled, then returns.
pub type Worker =
    Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Builds a service's [`Extras`] from its (migrated) pool; their metrics go into `registry`, served
/// with the others at `/metrics`.
pub type ExtrasBuilder = Box<dyn FnOnce(PgPool, &mut Registry) -> Extras + Send>;

/// A service's own workers and operator routes, run and served like the standard ones:
/// the workers are spawned and stopped with the message-table workers, the routes are
/// nested under `/admin` next to [`crate::admin`]'s (behind whatever guards `/admin`).
#[derive(Default)]
pub struct Extras {
    pub workers: Vec<Worker>,
    pub admin_routes: Router,
}

/// A built service: database migrated, port bound, workers ready. Nothing runs until
/// [`Service::run_until_stopped`].
pub struct Service {
    listener: TcpListener,
    router: Router,
    messaging: Messaging,
    extra_workers: Vec<Worker>,
}

impl Service {
    /// `routes` gets the pool and returns the service's own routes (with their state
    /// applied); `/healthz`, `/readyz`, `/metrics` (see [`crate::metrics`]), `/admin` (see
    /// [`crate::admin`], plus the `spec.extras` routes, all behind the admin token), the HTTP
    /// metrics, JSON 404/405 and the body limit are added here.
    pub async fn build(
        spec: ServiceSpec,
        cfg: &ServiceConfig,
        handler: Arc<dyn MessageHandler>,
        routes: impl FnOnce(PgPool) -> Router,
    ) -> anyhow::Result<Self> {
        // Before touching anything: a configuration that could process a message twice
        // never starts.
        cfg.messaging
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        declare_at_start_up(&cfg.messaging, spec.name).await?;
        let pool =
            db::connect_and_migrate(&cfg.database_url, cfg.db_max_connections, spec.migrator)
                .await?;
        let mut registry = Registry::default();
        let table_metrics = Arc::new(MessageTableMetrics::register(&mut registry));
        let http_metrics = common::metrics::HttpMetrics::register(&mut registry);
        let messaging = Messaging::new(
            pool.clone(),
            db::relay_pool(&pool, cfg.messaging.outbox.relays),
            handler,
            &cfg.messaging,
            spec.name,
            table_metrics,
        );
        // The service's own workers register their metrics beside the message table's.
        let extras = spec
            .extras
            .map(|build| build(pool.clone(), &mut registry))
            .unwrap_or_default();
        let readiness = messaging.readiness(pool.clone());
        let metrics = crate::metrics::MetricsState {
            registry: Arc::new(registry),
            pool: pool.clone(),
            broker_links: readiness.links().cloned().collect(),
        };
        let admin = crate::admin::router(
            pool.clone(),
            messaging.inbox_counters(),
            cfg.messaging.outbox.message_ttl,
        )
        .merge(crate::admin::queue_router(crate::admin::QueueProbe::new(
            cfg.messaging.amqp.clone(),
            cfg.messaging.queue.clone(),
            cfg.messaging.management_url.clone(),
        )))
        .merge(extras.admin_routes)
        // Empty unless DEMO_FAULTS: then /admin/faults is an unknown route (404).
        .merge(crate::faults::router(messaging.faults.clone()))
        // One layer on the whole nest: every admin route, the message tables' and the
        // service's own (`extras`, today or added later), needs the token without code of
        // its own. `layer`, not `route_layer`, over a fallback of the nest's own: an
        // unknown admin path is a 401 too, so probing without the token reveals nothing.
        .fallback(common::http::not_found)
        .layer(middleware::from_fn_with_state(
            cfg.admin.clone(),
            common::admin::require_admin,
        ));
        let document = Arc::new(openapi_document((spec.openapi)(), messaging.faults.is_on()));
        let router = routes(pool.clone())
            .nest("/admin", admin)
            .route(
                "/openapi.json",
                get(|State(doc): State<Arc<serde_json::Value>>| async move {
                    axum::Json(doc.as_ref().clone())
                })
                .with_state(document),
            )
            .route("/healthz", get(common::http::healthz))
            .route("/metrics", get(crate::metrics::scrape).with_state(metrics))
            .route(
                "/readyz",
                get(|State(r): State<Readiness>| async move { r.respond().await })
                    .with_state(readiness),
            )
            .fallback(common::http::not_found)
            .method_not_allowed_fallback(common::http::method_not_allowed)
            .layer(DefaultBodyLimit::max(spec.max_body_bytes))
            .layer(middleware::from_fn_with_state(
                spec.max_body_bytes,
                common::http::refuse_oversized_body,
            ))
            .layer(middleware::from_fn_with_state(
                http_metrics,
                common::metrics::track,
            ))
            // A 5xx is expected while a dependency is down (readiness 503s every few
            // seconds): a warning, not an error. Real internal errors log their cause.
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(common::trace::request_span)
                    .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
            );
        let listener = TcpListener::bind(&cfg.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.addr))?;
        Ok(Self {
            listener,
            router,
            messaging,
            extra_workers: extras.workers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// What the inbox did so far (duplicates dropped, failures…).
    pub fn inbox_counters(&self) -> Arc<InboxCounters> {
        self.messaging.inbox_counters()
    }

    /// Serves and runs the workers until `shutdown` (see [`serve`]).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        serve(
            self.listener,
            self.router,
            self.messaging,
            self.extra_workers,
            shutdown,
        )
        .await
    }
}
