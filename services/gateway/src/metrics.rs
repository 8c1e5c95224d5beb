//! The gateway's Prometheus metrics: the HTTP request families of [`common::metrics`] and
//! the upstream attempts per instance, in the gateway's own registry (several gateways and
//! services share one process in the system tests; see [`common::metrics`]).
//!
//! The `instance` label is an instance's configured base URL: bounded, as it comes from
//! the route table, never from a request.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// The `result` values of `gateway_upstream_results_total`.
pub const RESULTS: [&str; 6] = [
    "ok",
    "5xx",
    "connect_failure",
    "timeout",
    "ejected",
    "error",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub instance: String,
    pub result: &'static str,
}

/// `gateway_upstream_results_total{instance, result}`: one count per attempt on an
/// instance (`ok`: any answer below 500; `5xx`; `connect_failure`; `timeout`: the route's
/// deadline passed during the attempt; `error`: the request failed after connecting),
/// plus `ejected` each time a connect failure takes the instance out of rotation.
#[derive(Clone, Default)]
pub struct UpstreamMetrics {
    results: Family<UpstreamLabels, Counter>,
}

impl UpstreamMetrics {
    /// Every instance's series, at 0 from the start.
    pub fn new<'a>(instances: impl IntoIterator<Item = &'a str>) -> Self {
        let metrics = Self::default();
        for instance in instances {
            for result in RESULTS {
                metrics.results.get_or_create_owned(&UpstreamLabels {
                    instance: instance.to_string(),
                    result,
                });
            }
        }
        metrics
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_upstream_results",
            "Upstream attempts by instance (its configured base URL) and result",
            self.results.clone(),
        );
    }

    pub fn record(&self, instance: &str, result: &'static str) {
        self.results
            .get_or_create(&UpstreamLabels {
                instance: instance.to_string(),
                result,
            })
            .inc();
    }
}
