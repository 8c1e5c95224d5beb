//! A route's instances at run time: round robin, ejection of instances that refuse
//! connections, and trials that bring them back.
//!
//! Why connect failures only: a refused (or timed-out) connection proves the request never
//! reached the instance, so the gateway may safely try the next one, and it is the cheapest,
//! least ambiguous sign that an instance is gone (stopped, restarting, wrong port). Slow or
//! failing answers are the service's business and reach the client as they are.
//!
//! Why ejection changes only the order: an ejected instance is skipped while others are in
//! rotation, but tried last rather than never. So one dead instance of two costs nothing
//! after its first refusal, and a route with one instance that restarts is used again by the
//! first request after it is back, not after a backoff.
//!
//! Why trials instead of a background prober: after the ejection backoff, the next request
//! tries the ejected instance first (one request per backoff, never several at once). If it
//! still refuses, the request moves on to the next instance, invisible to the client, and the
//! backoff doubles; if it connects, the instance is back in rotation. No extra traffic, no
//! task to stop, and a route nobody calls costs nothing.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::http::{
    Uri,
    uri::{Authority, PathAndQuery, Scheme},
};
use reqwest::Url;

/// How long an ejected instance waits for its trial: `base` after the first refusal,
/// doubling per failed trial, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct EjectionPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl EjectionPolicy {
    fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << exp).min(self.max)
    }
}

/// One route's instances.
pub struct Upstream {
    instances: Vec<Instance>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(base_urls: &[Url], policy: EjectionPolicy) -> Self {
        Upstream {
            instances: base_urls
                .iter()
                .map(|url| Instance::new(url.clone(), policy))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// The instances in the order one request should try them: an ejected instance whose
    /// trial is due first (at most one request claims each trial), then those in rotation,
    /// round robin among themselves, then the other ejected ones as a last resort.
    pub fn attempt_order(&self) -> Vec<&Instance> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        // The usual case, every instance in rotation: the round robin alone, in one vector.
        if !self.instances.iter().any(Instance::is_ejected) {
            let mut order: Vec<&Instance> = self.instances.iter().collect();
            let len = order.len();
            if len > 0 {
                order.rotate_left(turn % len);
            }
            return order;
        }
        let now = Instant::now();
        let (mut trials, mut rotation, mut last_resort) = (Vec::new(), Vec::new(), Vec::new());
        for instance in &self.instances {
            if !instance.is_ejected() {
                rotation.push(instance);
            } else if instance.claim_trial(now) {
                trials.push(instance);
            } else {
                last_resort.push(instance);
            }
        }
        // Rotating the healthy ones only spreads an ejected instance's share evenly.
        for list in [&mut rotation, &mut last_resort] {
            let len = list.len();
            if len > 0 {
                list.rotate_left(turn % len);
            }
        }
        trials.extend(rotation);
        trials.extend(last_resort);
        trials
    }
}

/// One upstream instance and its ejection state.
pub struct Instance {
    base_url: Url,
    /// `base_url` split once for [`Instance::uri_for`]: forwarding builds no URL by parsing.
    scheme: Scheme,
    authority: Authority,
    /// The base URL's path without its trailing slash (empty for `/`).
    base_path: String,
    policy: EjectionPolicy,
    /// Mirrors `ejection.is_some()`, so the common case (in rotation) takes no lock.
    ejected: AtomicBool,
    ejection: Mutex<Option<Ejection>>,
}

#[derive(Debug, Clone, Copy)]
struct Ejection {
    since: Instant,
    /// Connect failures since the instance was last in rotation.
    failures: u32,
    trial_at: Instant,
}

impl Instance {
    fn new(base_url: Url, policy: EjectionPolicy) -> Self {
        // A route's instances are http URLs with a host (`RouteTable::parse`), so this
        // cannot fail; an empty authority would make every request a 502, not a panic.
        let uri: Uri = base_url.as_str().parse().unwrap_or_default();
        let parts = uri.into_parts();
        Instance {
            scheme: parts.scheme.unwrap_or(Scheme::HTTP),
            authority: parts
                .authority
                .unwrap_or_else(|| Authority::from_static("invalid")),
            base_path: base_url.path().trim_end_matches('/').to_string(),
            base_url,
            policy,
            ejected: AtomicBool::new(false),
            ejection: Mutex::new(None),
        }
    }

    /// The base URL without its trailing slash, as an operator would write it.
    pub fn name(&self) -> &str {
        self.base_url.as_str().trim_end_matches('/')
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// The upstream URL for `path_and_query` (which starts with `/` and has no dot
    /// segments): the base URL's path followed by it, so a base of `http://h/api` serves
    /// `/buy` as `http://h/api/buy`.
    pub fn url_for(&self, path_and_query: &str) -> Result<Url, String> {
        Url::parse(&format!("{}{path_and_query}", self.name())).map_err(|e| e.to_string())
    }

    /// The same as [`Instance::url_for`], as the `Uri` the HTTP client takes: no parsing
    /// of the whole URL, as `path_and_query` comes from [`Url`] already.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, String> {
        // From its parts rather than through `Uri::builder`, which moved the whole
        // half-built URI through each of its steps.
        let mut target = String::with_capacity(self.base_path.len() + path_and_query.len());
        target.push_str(&self.base_path);
        target.push_str(path_and_query);
        let mut parts = axum::http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|e| e.to_string())?);
        Uri::from_parts(parts).map_err(|e| e.to_string())
    }

    /// An attempt started at `started` could not connect: eject the instance, or push its
    /// next trial further away if it already was. True when this ejected it.
    pub fn connect_failed(&self, started: Instant) -> bool {
        let now = Instant::now();
        let mut ejection = self.lock();
        let (since, failures) = match *ejection {
            Some(e) => (e.since, e.failures + 1),
            None => (started, 1),
        };
        let delay = self.policy.delay(failures);
        let newly_ejected = ejection.is_none();
        if newly_ejected {
            tracing::warn!(
                instance = self.name(),
                retry_in_ms = delay.as_millis() as u64,
                "upstream instance refused a connection: ejected"
            );
        }
        *ejection = Some(Ejection {
            since,
            failures,
            trial_at: now + delay,
        });
        self.ejected.store(true, Ordering::Relaxed);
        newly_ejected
    }

    /// An attempt started at `started` connected (whatever happened next): the instance is
    /// reachable. An attempt that started before the ejection proves nothing about now.
    pub fn connected(&self, started: Instant) {
        if !self.is_ejected() {
            return;
        }
        let mut ejection = self.lock();
        if ejection.is_some_and(|e| started >= e.since) {
            *ejection = None;
            self.ejected.store(false, Ordering::Relaxed);
            tracing::info!(
                instance = self.name(),
                "upstream instance accepts connections again: back in rotation"
            );
        }
    }

    /// True for the one caller that gets the due trial: the next trial moves a backoff away
    /// at once, so concurrent requests do not all try a dead instance.
    fn claim_trial(&self, now: Instant) -> bool {
        let mut ejection = self.lock();
        match ejection.as_mut() {
            Some(e) if now >= e.trial_at => {
                e.trial_at = now + self.policy.delay(e.failures);
                true
            }
            _ => false,
        }
    }

    /// The state is a few plain fields, always left consistent: a panic elsewhere while
    /// holding the lock cannot leave it half-written, so a poisoned lock is still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Ejection>> {
        self.ejection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(urls: &[&str], base_ms: u64) -> Upstream {
        let urls: Vec<Url> = urls.iter().map(|u| Url::parse(u).unwrap()).collect();
        let policy = EjectionPolicy {
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(base_ms * 4),
        };
        Upstream::new(&urls, policy)
    }

    fn order(upstream: &Upstream) -> Vec<&str> {
        upstream
            .attempt_order()
            .into_iter()
            .map(Instance::name)
            .collect()
    }

    #[test]
    fn round_robin_starts_one_further_each_time() {
        let up = upstream(&["http://a", "http://b", "http://c"], 1000);
        assert_eq!(order(&up), ["http://a", "http://b", "http://c"]);
        assert_eq!(order(&up), ["http://b", "http://c", "http://a"]);
        assert_eq!(order(&up), ["http://c", "http://a", "http://b"]);
        assert_eq!(order(&up), ["http://a", "http://b", "http://c"]);
    }

    #[test]
    fn an_ejected_instance_is_tried_last_until_its_trial_then_first_once() {
        // A backoff no test run reaches: the trial is never due by itself.
        let up = upstream(&["http://a", "http://b", "http://c"], 3_600_000);
        up.instances[0].connect_failed(Instant::now());
        assert_eq!(order(&up), ["http://b", "http://c", "http://a"]);
        assert_eq!(order(&up), ["http://c", "http://b", "http://a"]);
        assert_eq!(order(&up), ["http://b", "http://c", "http://a"]);

        // Make the trial due: exactly one request gets it, first.
        up.instances[0].lock().as_mut().unwrap().trial_at = Instant::now();
        assert_eq!(order(&up), ["http://a", "http://c", "http://b"]);
        assert_eq!(order(&up), ["http://b", "http://c", "http://a"]);
    }

    #[test]
    fn a_connection_readmits_only_when_the_attempt_started_after_the_ejection() {
        let up = upstream(&["http://a", "http://b"], 3_600_000);
        let a = &up.instances[0];
        let before = Instant::now();
        a.connect_failed(Instant::now());
        assert!(a.is_ejected());

        a.connected(before);
        assert!(a.is_ejected(), "a stale success must not readmit");

        a.connected(Instant::now());
        assert!(!a.is_ejected());
        assert_eq!(order(&up), ["http://a", "http://b"]);
    }

    #[test]
    fn failed_trials_double_the_backoff_up_to_the_maximum() {
        let policy = EjectionPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let delays: Vec<u64> = (1..=6)
            .map(|f| policy.delay(f).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);

        let up = upstream(&["http://a"], 100);
        let a = &up.instances[0];
        a.connect_failed(Instant::now());
        a.connect_failed(Instant::now());
        assert_eq!(a.lock().unwrap().failures, 2);
    }

    #[test]
    fn url_keeps_the_base_path() {
        let up = upstream(&["http://p:2/api"], 1000);
        let url = up.instances[0].url_for("/charge?a=1").unwrap();
        assert_eq!(url.as_str(), "http://p:2/api/charge?a=1");
        let uri = up.instances[0].uri_for("/charge?a=1").unwrap();
        assert_eq!(uri.to_string(), url.as_str());
        let up = upstream(&["http://p:2"], 1000);
        assert_eq!(
            up.instances[0].url_for("/").unwrap().as_str(),
            "http://p:2/"
        );
        assert_eq!(
            up.instances[0].uri_for("/").unwrap().to_string(),
            "http://p:2/"
        );
        let up = upstream(&["http://p:2/api/"], 1000);
        assert_eq!(
            up.instances[0].uri_for("/x").unwrap().to_string(),
            up.instances[0].url_for("/x").unwrap().as_str()
        );
    }
}
