//! What the services say about their message tables: `GET /admin/stats` and
//! `GET /admin/inbox/dead` of an instance. The statuses are the message-table crate's
//! business; this binary only reads the counts it reports.

use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use crate::{AnyResult, args::Instance};

/// `GET /admin/stats`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AdminStats {
    /// Rows of the service's outbox per state.
    pub outbox: OutboxCounts,
    /// Rows of the service's inbox per state.
    pub inbox: InboxRows,
    /// What this process's inbox did since it started.
    pub inbox_since_start: InboxSinceStart,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OutboxCounts {
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
}

impl OutboxCounts {
    /// Rows not yet published (waiting or claimed by a relay).
    pub fn unsent(&self) -> i64 {
        self.pending + self.in_flight
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InboxRows {
    pub failed: i64,
    pub dead: i64,
}

/// Counts since the process started (`message_table::inbox::InboxCounts`): the figures use
/// the duplicates dropped.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct InboxSinceStart {
    pub duplicates: u64,
}

/// A row of `GET /admin/inbox/dead` (the newest 100).
#[derive(Debug, Clone, Deserialize)]
pub struct DeadInbox {
    pub message_id: Uuid,
    pub last_error: Option<String>,
}

/// A client for the services' admin API, with `Authorization: Bearer <the token the
/// services got>`.
pub fn client(timeout: Duration, admin_token: &str) -> AnyResult<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {admin_token}"))?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .build()?)
}

async fn get<T: for<'de> Deserialize<'de>>(
    http: &reqwest::Client,
    instance: &Instance,
    path: &str,
) -> AnyResult<T> {
    let url = format!("{}{path}", instance.url);
    let res = http.get(&url).send().await?;
    if !res.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", res.status()).into());
    }
    Ok(res.json().await?)
}

pub async fn admin_stats(http: &reqwest::Client, instance: &Instance) -> AnyResult<AdminStats> {
    get(http, instance, "/admin/stats").await
}

#[derive(Deserialize)]
struct DeadList {
    dead: Vec<DeadInbox>,
}

pub async fn dead_inbox(http: &reqwest::Client, instance: &Instance) -> AnyResult<Vec<DeadInbox>> {
    Ok(get::<DeadList>(http, instance, "/admin/inbox/dead")
        .await?
        .dead)
}

/// The instances of each service, to ask one of them about the tables they share.
pub struct Services {
    pub http: reqwest::Client,
    pub instances: Vec<Instance>,
}

impl Services {
    pub fn of(&self, service: &str) -> impl Iterator<Item = &Instance> {
        self.instances
            .iter()
            .filter(move |i| i.service() == service)
    }

    /// The service's tables, as the first of its instances that answers reports them.
    pub async fn stats(&self, service: &str) -> AnyResult<AdminStats> {
        self.first(service, |i| admin_stats(&self.http, i)).await
    }

    /// The service's dead inbox rows (the newest 100).
    pub async fn dead_inbox(&self, service: &str) -> AnyResult<Vec<DeadInbox>> {
        self.first(service, |i| dead_inbox(&self.http, i)).await
    }

    async fn first<'a, T, F, Fut>(&'a self, service: &str, ask: F) -> AnyResult<T>
    where
        F: Fn(&'a Instance) -> Fut,
        Fut: Future<Output = AnyResult<T>>,
    {
        let mut last_error = format!("no {service} instance").into();
        for instance in self.of(service) {
            match ask(instance).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}
