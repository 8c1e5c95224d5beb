//! The gateway's Prometheus metrics: the HTTP request families of [`common::metrics`] and
//! the upstream attempts per instance, in the gateway's own registry (several gateways and
//! services share one process in the system tests; see [`common::metrics`]).
//!
//! The `instance` label is an instance's configured base URL: bounded, as it comes from
//! the route table, never from a request.

use std::sync::Arc;

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
    /// Each instance's counters, in the order of [`RESULTS`], taken from `results` once: a
    /// count is then one atomic add, without building the labels (an allocation), hashing
    /// them and taking the family's lock on every request.
    resolved: Arc<[(String, [Counter; RESULTS.len()])]>,
}

impl UpstreamMetrics {
    /// Every instance's series, at 0 from the start.
    pub fn new<'a>(instances: impl IntoIterator<Item = &'a str>) -> Self {
        let results = Family::<UpstreamLabels, Counter>::default();
        let resolved = instances
            .into_iter()
            .map(|instance| {
                let counters = RESULTS.map(|result| {
                    results.get_or_create_owned(&UpstreamLabels {
                        instance: instance.to_string(),
                        result,
                    })
                });
                (instance.to_string(), counters)
            })
            .collect();
        UpstreamMetrics { results, resolved }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_upstream_results",
            "Upstream attempts by instance (its configured base URL) and result",
            self.results.clone(),
        );
    }

    pub fn record(&self, instance: &str, result: &'static str) {
        let counter = self
            .resolved
            .iter()
            .find(|(name, _)| name == instance)
            .zip(RESULTS.iter().position(|r| *r == result))
            .map(|((_, counters), i)| &counters[i]);
        if let Some(counter) = counter {
            counter.inc();
            return;
        }
        // An instance or result not known at start: the same series, the slow way.
        self.results
            .get_or_create(&UpstreamLabels {
                instance: instance.to_string(),
                result,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text;

    use super::*;

    #[test]
    fn counts_go_to_the_series_of_the_instance_and_result() {
        let metrics = UpstreamMetrics::new(["http://a:1", "http://b:2"]);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.record("http://a:1", "ok");
        metrics.record("http://a:1", "ok");
        metrics.record("http://b:2", "timeout");
        metrics.record("http://c:3", "error");
        let mut out = String::new();
        text::encode(&mut out, &registry).unwrap();
        let count = |instance: &str, result: &str| {
            let series = format!(
                r#"gateway_upstream_results_total{{instance="{instance}",result="{result}"}} "#
            );
            let line = out.lines().find(|l| l.starts_with(&series));
            line.map(|l| l[series.len()..].to_string())
        };
        assert_eq!(count("http://a:1", "ok").as_deref(), Some("2"), "{out}");
        assert_eq!(count("http://b:2", "timeout").as_deref(), Some("1"));
        assert_eq!(count("http://b:2", "ok").as_deref(), Some("0"));
        assert_eq!(count("http://c:3", "error").as_deref(), Some("1"));
        assert_eq!(count("http://c:3", "ok"), None);
    }
}
