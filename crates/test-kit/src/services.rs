//! Order and pay inside the test's own process: the one way every crate's tests build a
//! service, run it on port 0, wait until it is ready and stop it. A test that needs a crash
//! (SIGKILL) runs the real binary instead ([`crate::ServiceProcess`]).

use std::sync::Arc;

use message_table::inbox::InboxCounters;
use service_kit::service::{MessagingConfig, Service, ServiceConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A service's config for a test: a free port, the test admin token ([`crate::admin`]).
/// A test changes a field (`addr`, `admin`) where it needs another value.
pub fn service_config(
    database_url: &str,
    messaging: &MessagingConfig,
    db_max_connections: u32,
) -> ServiceConfig {
    ServiceConfig {
        addr: "127.0.0.1:0".into(),
        database_url: database_url.into(),
        db_max_connections,
        admin: crate::admin(),
        messaging: messaging.clone(),
    }
}

/// Builds order from `config`, runs it and waits until it is ready.
pub async fn spawn_order(config: ServiceConfig) -> Instance {
    let app = order::build(config, None).await.expect("build order");
    Instance::run(app).await
}

/// [`spawn_order`] with its reconciler.
pub async fn spawn_order_with_reconciler(
    config: ServiceConfig,
    reconciler: order::reconciler::ReconcilerConfig,
) -> Instance {
    let app = order::build(config, Some(reconciler))
        .await
        .expect("build order");
    Instance::run(app).await
}

/// Builds pay from `config`, runs it and waits until it is ready.
pub async fn spawn_pay(config: ServiceConfig) -> Instance {
    let app = pay::build(config).await.expect("build pay");
    Instance::run(app).await
}

/// One running instance of order or pay, stopped gracefully by [`Instance::stop`] (as
/// SIGTERM would) or with the test.
pub struct Instance {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub counters: Arc<InboxCounters>,
    stop: CancellationToken,
    running: JoinHandle<anyhow::Result<()>>,
}

impl Instance {
    async fn run(app: Service) -> Self {
        let base = format!("http://{}", app.local_addr());
        let counters = app.inbox_counters();
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let running = tokio::spawn(app.run_until_stopped(shutdown));
        crate::eventually(
            &format!("{base}/readyz is 200"),
            crate::READY_WITHIN,
            || async {
                let res = reqwest::get(format!("{base}/readyz")).await.ok()?;
                res.status().is_success().then_some(())
            },
        )
        .await;
        Instance {
            base,
            counters,
            stop,
            running,
        }
    }

    /// Graceful shutdown: stop accepting, finish requests and deliveries in flight, close
    /// the broker channels. Returns what `run_until_stopped` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.running.await.expect("the service task panicked")
    }
}
