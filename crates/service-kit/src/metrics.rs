//! `GET /metrics` of a service with message tables: its own registry (HTTP and message
//! table families, see [`common::metrics`] for why there is no global one), plus the
//! outbox gauges read from the database at each scrape and the node each broker
//! connection is on.

use std::sync::Arc;

use axum::{extract::State, http::HeaderMap, response::Response};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use message_table::amqp::BrokerLink;

#[derive(Clone)]
pub struct MetricsState {
    pub registry: Arc<Registry>,
    pub pool: PgPool,
    pub broker_links: Vec<BrokerLink>,
}

/// The registry, then the outbox gauges. A scrape whose query fails still answers with
/// everything else: a database outage must not blind the counters that explain it.
pub async fn scrape(State(s): State<MetricsState>, headers: HeaderMap) -> Response {
    let mut gauges = Registry::default();
    if let Err(e) = message_table::metrics::outbox_gauges(&s.pool, &mut gauges).await {
        tracing::warn!(error = %e, "metrics scrape without the outbox gauges: the query failed");
        gauges = Registry::default();
    }
    message_table::metrics::broker_link_gauges(&s.broker_links, &mut gauges);
    common::metrics::encode(
        common::metrics::Format::from_accept(&headers),
        &[&s.registry, &gauges],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    #[tokio::test]
    async fn a_scrape_whose_query_fails_answers_without_the_outbox_gauges() {
        let mut registry = Registry::default();
        let _m = message_table::metrics::MessageTableMetrics::register(&mut registry);
        // Nothing listens on port 1: the query fails at once.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_lazy("postgres://postgres@127.0.0.1:1/none")
            .unwrap();
        let state = MetricsState {
            registry: Arc::new(registry),
            pool,
            broker_links: vec![BrokerLink::new("test/relay")],
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::ACCEPT,
            "application/openmetrics-text".parse().unwrap(),
        );
        let response = scrape(State(state), headers).await;
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains("outbox_publishes_total{outcome=\"confirmed\"} 0"),
            "{text}"
        );
        assert!(!text.contains("outbox_messages"), "{text}");
        assert!(
            text.contains("amqp_connection_up{link=\"test/relay\",node=\"\"} 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
