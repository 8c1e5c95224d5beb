//! The operator's view of the local message tables, mounted at `/admin` on every service.
//!
//! # Why
//! Nothing is dropped silently: a message the relay could not deliver, or the inbox could
//! not process, ends `dead` with its reason. Someone has to see it and, once the cause is
//! fixed, put it back in line. These endpoints are that someone's tools:
//!
//! - `GET  /admin/stats`: rows per status in the outbox and the inbox, the oldest waiting
//!   outbox row's age, and what the inbox did since the process started (duplicates
//!   dropped, failures, poison);
//! - `GET  /admin/outbox/dead`, `GET /admin/inbox/dead`: the dead rows and their reasons,
//!   newest first (at most 100);
//! - `POST /admin/outbox/{id}/requeue`: a dead outbox message is published again, with
//!   attempts reset and a fresh time to live;
//! - `POST /admin/inbox/{id}/requeue`: a dead inbox message is run again by the retry
//!   sweeper. Poison (unreadable) messages cannot be: 409;
//! - `GET /admin/outbox`, `GET /admin/inbox`: rows by `status`, `event_type` and age
//!   (`before`, RFC 3339), newest first, `limit` (1..=500, default 50) per page and an
//!   opaque `cursor` (the previous page's `next_cursor`) for the next page;
//! - `POST /admin/outbox/requeue`, `POST /admin/inbox/requeue`: requeue `{"ids": [...]}`
//!   or `{"all": true}` dead rows (optionally with `event_type` and `before`), answering
//!   how many;
//! - `DELETE /admin/outbox/dead?before=...`, `DELETE /admin/inbox/dead?before=...`: delete
//!   dead rows older than `before` (optionally of `event_type`), answering how many;
//! - `GET /admin/queue`: the service's queue as the broker counts it (ready, and
//!   unacknowledged where the management API is configured), for the dashboard's lane view:
//!   between an outbox row marked sent and an inbox row, a message is the broker's. Read
//!   here, not by the gateway, which holds no broker client.
//!
//! Every route is behind `ADMIN_TOKEN` ([`common::admin`]): the layer sits on the whole
//! nest in [`crate::service::Service::build`]. The gateway forwards `/admin/<route>/...`
//! only with the token; its `GATEWAY_INTERNAL_PATHS` still keeps the services' own paths
//! from clients.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use common::{
    http::{ApiError, Json, Path, Query, limit_param, text_field},
    openapi::{AdminErrors, AdminSecurity, BodyErrors, ErrorBody},
};
use message_table::{
    InboxStatus, OutboxStatus,
    admin::{self, Filter, InboxRow, OutboxRow, PageKey, Selection},
    amqp::{self as broker, AmqpConfig},
    inbox::{self, InboxCounters, InboxCounts, InboxStats},
    outbox::{self, OutboxStats},
};
use utoipa::{IntoParams, OpenApi, ToSchema};

#[derive(Clone)]
struct AdminState {
    pool: PgPool,
    counters: Arc<InboxCounters>,
    message_ttl: Duration,
}

/// The `/admin` routes, to be nested (behind the token) by [`crate::service::Service`].
pub fn router(pool: PgPool, counters: Arc<InboxCounters>, message_ttl: Duration) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/outbox", get(list_outbox))
        .route("/inbox", get(list_inbox))
        .route("/outbox/dead", get(dead_outbox).delete(purge_outbox))
        .route("/inbox/dead", get(dead_inbox).delete(purge_inbox))
        .route("/outbox/requeue", post(requeue_many_outbox))
        .route("/inbox/requeue", post(requeue_many_inbox))
        .route("/outbox/{id}/requeue", post(requeue_outbox))
        .route("/inbox/{id}/requeue", post(requeue_inbox))
        .with_state(AdminState {
            pool,
            counters,
            message_ttl,
        })
}

/// `GET /admin/stats`'s body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Outbox rows per status (`in_flight`: pending rows a relay holds right now).
    pub outbox: OutboxStats,
    /// Inbox rows per status.
    pub inbox: InboxStats,
    /// What this process's inbox did since it started.
    pub inbox_since_start: InboxCounts,
    /// Seconds since the oldest outbox row waiting to be published was written (0 when
    /// none): how far the relay is behind, as `outbox_oldest_pending_age_seconds` says.
    pub outbox_oldest_pending_age_seconds: f64,
}

/// Rows per status in both tables, and this process's inbox counters.
#[utoipa::path(get, path = "/admin/stats", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "counts", body = Stats), AdminErrors))]
async fn stats(State(s): State<AdminState>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(Stats {
        outbox: outbox::stats(&s.pool).await?,
        inbox: inbox::stats(&s.pool).await?,
        inbox_since_start: s.counters.snapshot(),
        outbox_oldest_pending_age_seconds: outbox::oldest_waiting_age(&s.pool).await?,
    }))
}

/// Where `GET /admin/queue` reads the service's queue.
#[derive(Clone)]
pub struct QueueProbe {
    pub amqp: AmqpConfig,
    pub queue: String,
    /// `RABBITMQ_MANAGEMENT_URL` (`http://user:password@host:15672`): ready and unacked
    /// counts from the management API. Without it (or when it fails), a passive declare
    /// tells the ready count and the consumers only.
    pub management_url: Option<String>,
    http: reqwest::Client,
    /// The passive declare's channel, kept between calls (the page polls every second).
    channel: Arc<tokio::sync::Mutex<Option<(lapin::Connection, lapin::Channel)>>>,
}

impl QueueProbe {
    pub fn new(amqp: AmqpConfig, queue: String, management_url: Option<String>) -> Self {
        Self {
            amqp,
            queue,
            management_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client without TLS builds"),
            channel: Arc::default(),
        }
    }

    /// The queue's counts: from the management API when configured and answering, else
    /// from a passive declare.
    async fn read(&self) -> Result<QueueCounts, ApiError> {
        if let Some(url) = &self.management_url {
            match self.read_management_api(url).await {
                Ok(counts) => return Ok(counts),
                Err(e) => {
                    tracing::debug!(error = %e, "management API unavailable; passive declare")
                }
            }
        }
        self.read_passive_declare()
            .await
            .map_err(|e| ApiError::Unavailable {
                code: "broker_unavailable",
                message: format!("the broker did not answer about {}: {e:#}", self.queue),
            })
    }

    async fn read_management_api(&self, base: &str) -> anyhow::Result<QueueCounts> {
        #[derive(Deserialize)]
        struct Queue {
            messages_ready: Option<u64>,
            messages_unacknowledged: Option<u64>,
            consumers: Option<u64>,
        }
        // The AMQP URL's vhost, still percent-encoded ("%2f" for "/"), as the API wants it.
        let vhost = self
            .amqp
            .url
            .rsplit_once('/')
            .map(|(head, v)| {
                if head.ends_with('/') || v.is_empty() {
                    "%2f"
                } else {
                    v
                }
            })
            .unwrap_or("%2f");
        let url = format!(
            "{}/api/queues/{vhost}/{}",
            base.trim_end_matches('/'),
            self.queue
        );
        // Errors without the URL: it holds the management API's password.
        let q: Queue = async {
            self.http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(reqwest::Error::without_url)?;
        Ok(QueueCounts {
            queue: self.queue.clone(),
            ready: q.messages_ready.unwrap_or(0),
            unacked: Some(q.messages_unacknowledged.unwrap_or(0)),
            consumers: q.consumers.unwrap_or(0),
            source: "management".into(),
        })
    }

    async fn read_passive_declare(&self) -> anyhow::Result<QueueCounts> {
        let mut held = self.channel.lock().await;
        if !held
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected())
        {
            let conn = broker::connect(&self.amqp, "admin-queue-probe").await?;
            let channel = conn.create_channel().await?;
            *held = Some((conn, channel));
        }
        let (_, channel) = held.as_ref().expect("just connected");
        let declared = channel
            .queue_declare(
                lapin::types::ShortString::from(self.queue.as_str()),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        let q = match declared {
            Ok(q) => q,
            Err(e) => {
                // The channel is closed by a failed declare: a new one next time.
                *held = None;
                return Err(e.into());
            }
        };
        Ok(QueueCounts {
            queue: self.queue.clone(),
            ready: q.message_count().into(),
            unacked: None,
            consumers: q.consumer_count().into(),
            source: "passive_declare".into(),
        })
    }
}

/// `GET /admin/queue`'s body.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueCounts {
    pub queue: String,
    /// Messages waiting in the queue.
    pub ready: u64,
    /// Delivered to a consumer, not acked yet; `null` when only a passive declare answered
    /// (it does not tell).
    pub unacked: Option<u64>,
    pub consumers: u64,
    /// `management` or `passive_declare`.
    pub source: String,
}

/// The `/admin/queue` route, to be nested (behind the token) next to [`router`]'s.
pub fn queue_router(probe: QueueProbe) -> Router {
    Router::new()
        .route("/queue", get(queue_counts))
        .with_state(probe)
}

/// The service's queue as the broker counts it.
#[utoipa::path(get, path = "/admin/queue", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "the queue's counts", body = QueueCounts),
        (status = 503, description = "the broker did not answer", body = ErrorBody),
        AdminErrors))]
async fn queue_counts(State(probe): State<QueueProbe>) -> Result<Json<QueueCounts>, ApiError> {
    Ok(Json(probe.read().await?))
}

/// Rows per page when `limit` is not given, and the most a page may ask for.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;
/// The most ids one requeue may name.
const MAX_IDS: usize = 1_000;
/// What the older `GET /admin/{outbox,inbox}/dead` answer: the newest dead rows.
const DEAD_LIST_LIMIT: i64 = 100;

/// Query parameters of the listings, as text: each is checked here, so a bad one is a 400
/// naming it rather than a generic rejection.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    status: Option<String>,
    event_type: Option<String>,
    before: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// The listing parameters both tables share, as the OpenAPI document shows them (`status`
/// is per table, in each path).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParamsDoc {
    /// Only rows of this event type.
    #[param(schema_with = event_type_schema)]
    event_type: Option<String>,
    /// Only rows created (outbox) or received (inbox) strictly before this RFC 3339 time.
    before: Option<DateTime<Utc>>,
    /// Rows per page.
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`, unchanged.
    #[param(pattern = r"^-?[0-9]{1,16}\.[0-9a-f]{32}$")]
    cursor: Option<String>,
}

/// A checked page request.
struct Page {
    filter: Filter,
    after: Option<PageKey>,
    limit: i64,
}

impl ListParams {
    fn page(&self) -> Result<Page, ApiError> {
        let limit = limit_param(self.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
        Ok(Page {
            filter: Filter {
                event_type: self
                    .event_type
                    .as_deref()
                    .map(event_type)
                    .transpose()
                    .map_err(|m| ApiError::bad_request("invalid_event_type", m))?,
                before: self.before.as_deref().map(parse_before).transpose()?,
            },
            after: self.cursor.as_deref().map(decode_cursor).transpose()?,
            limit,
        })
    }
}

/// The longest event type a filter may name.
const MAX_EVENT_TYPE: usize = 200;

/// An `event_type` filter, checked like every free-text field.
fn event_type(value: &str) -> Result<String, String> {
    text_field("event_type", value, MAX_EVENT_TYPE)
}

fn event_type_schema() -> utoipa::openapi::Object {
    common::openapi::text_schema(MAX_EVENT_TYPE)
}

fn event_type_or_null_schema() -> utoipa::openapi::Object {
    common::openapi::text_or_null_schema(MAX_EVENT_TYPE)
}

/// `status`: one of `all`'s names, or none for every status.
fn parse_status<S: Copy + std::fmt::Display>(
    value: Option<&str>,
    all: &[S],
) -> Result<Option<S>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    all.iter()
        .find(|s| s.to_string() == value)
        .map(|s| Some(*s))
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(ToString::to_string).collect();
            ApiError::bad_request(
                "invalid_status",
                format!("status must be one of {}, not {value:?}", names.join(", ")),
            )
        })
}

fn parse_before(value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_before",
                format!("before must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z, not {value:?}: {e}"),
            )
        })
}

/// A cursor is the last row's sort key, `<microseconds since the epoch>.<id>`: opaque to
/// clients, exact for PostgreSQL's microsecond timestamps.
fn encode_cursor(key: PageKey) -> String {
    format!("{}.{}", key.at.timestamp_micros(), key.id.simple())
}

fn decode_cursor(cursor: &str) -> Result<PageKey, ApiError> {
    let (micros, id) = cursor.split_once('.').unwrap_or_default();
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros);
    match (at, Uuid::try_parse(id)) {
        (Some(at), Ok(id)) => Ok(PageKey { at, id }),
        _ => Err(ApiError::bad_request(
            "invalid_cursor",
            "cursor is not one this API returned (pass next_cursor unchanged)",
        )),
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowPage<R> {
    pub items: Vec<R>,
    /// Pass it as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<R> RowPage<R> {
    /// The page from up to `limit + 1` rows: the extra one only says there is a next page.
    fn new(mut rows: Vec<R>, limit: i64, key: fn(&R) -> PageKey) -> Self {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = rows.last().filter(|_| more).map(|r| encode_cursor(key(r)));
        RowPage {
            items: rows,
            next_cursor,
        }
    }
}

/// Outbox rows, newest first, a page at a time.
#[utoipa::path(get, path = "/admin/outbox", tag = "admin", security(("admin_token" = [])),
    params(("status" = Option<OutboxStatus>, Query, description = "only rows in this status"), ListParamsDoc),
    responses((status = 200, description = "a page of rows", body = RowPage<OutboxRow>),
        (status = 400, description = "a parameter is invalid (named in the message)", body = ErrorBody),
        AdminErrors))]
async fn list_outbox(
    State(s): State<AdminState>,
    Query(p): Query<ListParams>,
) -> Result<Json<RowPage<OutboxRow>>, ApiError> {
    let status = parse_status(p.status.as_deref(), &OutboxStatus::ALL)?;
    let page = p.page()?;
    let rows =
        admin::list_outbox(&s.pool, status, &page.filter, page.after, page.limit + 1).await?;
    Ok(Json(RowPage::new(rows, page.limit, OutboxRow::key)))
}

/// Inbox rows, newest first, a page at a time.
#[utoipa::path(get, path = "/admin/inbox", tag = "admin", security(("admin_token" = [])),
    params(("status" = Option<InboxStatus>, Query, description = "only rows in this status"), ListParamsDoc),
    responses((status = 200, description = "a page of rows", body = RowPage<InboxRow>),
        (status = 400, description = "a parameter is invalid (named in the message)", body = ErrorBody),
        AdminErrors))]
async fn list_inbox(
    State(s): State<AdminState>,
    Query(p): Query<ListParams>,
) -> Result<Json<RowPage<InboxRow>>, ApiError> {
    let status = parse_status(p.status.as_deref(), &InboxStatus::ALL)?;
    let page = p.page()?;
    let rows = admin::list_inbox(&s.pool, status, &page.filter, page.after, page.limit + 1).await?;
    Ok(Json(RowPage::new(rows, page.limit, InboxRow::key)))
}

/// The newest dead rows of a table (at most 100).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadRows<R> {
    pub dead: Vec<R>,
}

/// The newest 100 dead outbox rows, with their reasons.
#[utoipa::path(get, path = "/admin/outbox/dead", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "dead rows", body = DeadRows<OutboxRow>), AdminErrors))]
async fn dead_outbox(State(s): State<AdminState>) -> Result<Json<DeadRows<OutboxRow>>, ApiError> {
    let dead = Some(OutboxStatus::Dead);
    let rows = admin::list_outbox(&s.pool, dead, &Filter::default(), None, DEAD_LIST_LIMIT).await?;
    Ok(Json(DeadRows { dead: rows }))
}

/// The newest 100 dead inbox rows, with their reasons.
#[utoipa::path(get, path = "/admin/inbox/dead", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "dead rows", body = DeadRows<InboxRow>), AdminErrors))]
async fn dead_inbox(State(s): State<AdminState>) -> Result<Json<DeadRows<InboxRow>>, ApiError> {
    let dead = Some(InboxStatus::Dead);
    let rows = admin::list_inbox(&s.pool, dead, &Filter::default(), None, DEAD_LIST_LIMIT).await?;
    Ok(Json(DeadRows { dead: rows }))
}

/// `{"ids": [...]}` or `{"all": true}`, the latter optionally narrowed by `event_type` and
/// `before` (RFC 3339). Read as one struct, so each wrong combination gets its own message;
/// [`RequeueRequest`] is how the document shows it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    #[serde(default)]
    ids: Key<Vec<Uuid>>,
    #[serde(default)]
    all: Key<bool>,
    #[serde(default)]
    event_type: Key<String>,
    #[serde(default)]
    before: Key<DateTime<Utc>>,
}

/// A key of a JSON object: absent, or present (its value may be `null`). The document's two
/// shapes say which keys each may have, so `{"ids": [...], "before": null}` is neither.
#[derive(Debug, Default)]
enum Key<T> {
    #[default]
    Absent,
    Present(Option<T>),
}

impl<T> Key<T> {
    fn is_absent(&self) -> bool {
        matches!(self, Key::Absent)
    }

    /// The value; `None` when absent or `null`.
    fn value(self) -> Option<T> {
        match self {
            Key::Absent => None,
            Key::Present(v) => v,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Key<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(d).map(Key::Present)
    }
}

/// Which dead rows to requeue: a list of ids, or every dead row (optionally narrowed).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RequeueRequest {
    Ids(RequeueIds),
    All(RequeueAll),
}

/// These rows (those not dead are listed in `not_requeued`).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RequeueIds {
    #[schema(min_items = 1, max_items = 1000)]
    ids: Vec<Uuid>,
}

/// Every dead row, optionally only of `event_type` and created before `before`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RequeueAll {
    #[schema(schema_with = only_true)]
    all: bool,
    #[schema(schema_with = event_type_or_null_schema)]
    event_type: Option<String>,
    #[schema(schema_with = time_or_null_schema)]
    before: Option<DateTime<Utc>>,
}

/// An RFC 3339 time or `null`, as two alternatives: a validator reads `format` only on a
/// schema of one type.
fn time_or_null_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::{KnownFormat, ObjectBuilder, OneOfBuilder, Type, schema::SchemaFormat};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}

/// `true`, the one value `all` may take.
fn only_true() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Boolean)
        .enum_values(Some([true]))
        .build()
}

impl RequeueBody {
    fn selection(self) -> Result<Selection, ApiError> {
        match (self.ids, self.all) {
            (Key::Present(Some(ids)), Key::Absent)
                if self.event_type.is_absent() && self.before.is_absent() =>
            {
                if ids.is_empty() || ids.len() > MAX_IDS {
                    return Err(ApiError::validation(format!(
                        "ids must name 1 to {MAX_IDS} messages"
                    )));
                }
                Ok(Selection::Ids(ids))
            }
            (Key::Absent, Key::Present(Some(true))) => Ok(Selection::Matching(Filter {
                event_type: self
                    .event_type
                    .value()
                    .as_deref()
                    .map(event_type)
                    .transpose()
                    .map_err(ApiError::validation)?,
                before: self.before.value(),
            })),
            _ => Err(ApiError::validation(
                "give either ids, or all: true with optional event_type and before",
            )),
        }
    }
}

/// What a requeue did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Requeued {
    pub requeued: usize,
    pub ids: Vec<Uuid>,
    /// For a list of ids: those that were not dead (or were poison). Absent for `all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_requeued: Option<Vec<Uuid>>,
}

impl Requeued {
    fn new(selection: &Selection, requeued: Vec<Uuid>, table: &str) -> Self {
        tracing::info!(
            count = requeued.len(),
            table,
            "dead messages requeued by an operator"
        );
        let not_requeued = match selection {
            Selection::Ids(asked) => Some(
                asked
                    .iter()
                    .filter(|id| !requeued.contains(id))
                    .copied()
                    .collect(),
            ),
            Selection::Matching(_) => None,
        };
        Requeued {
            requeued: requeued.len(),
            ids: requeued,
            not_requeued,
        }
    }
}

/// Requeue dead outbox rows: each is published again with attempts reset and a fresh time
/// to live.
#[utoipa::path(post, path = "/admin/outbox/requeue", tag = "admin", security(("admin_token" = [])),
    request_body = RequeueRequest,
    responses((status = 200, description = "what was requeued", body = Requeued), BodyErrors, AdminErrors))]
async fn requeue_many_outbox(
    State(s): State<AdminState>,
    Json(body): Json<RequeueBody>,
) -> Result<Json<Requeued>, ApiError> {
    let selection = body.selection()?;
    let requeued = admin::requeue_dead_outbox(&s.pool, &selection, s.message_ttl).await?;
    Ok(Json(Requeued::new(&selection, requeued, "outbox")))
}

/// Requeue dead inbox rows: the retry sweeper runs each again (poison rows cannot be).
#[utoipa::path(post, path = "/admin/inbox/requeue", tag = "admin", security(("admin_token" = [])),
    request_body = RequeueRequest,
    responses((status = 200, description = "what was requeued", body = Requeued), BodyErrors, AdminErrors))]
async fn requeue_many_inbox(
    State(s): State<AdminState>,
    Json(body): Json<RequeueBody>,
) -> Result<Json<Requeued>, ApiError> {
    let selection = body.selection()?;
    let requeued = admin::requeue_dead_inbox(&s.pool, &selection).await?;
    Ok(Json(Requeued::new(&selection, requeued, "inbox")))
}

/// `before` (required, RFC 3339) and `event_type` of a purge.
#[derive(Debug, Deserialize)]
struct PurgeParams {
    before: Option<String>,
    event_type: Option<String>,
}

/// The parameters of a purge, as the document shows them.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct PurgeParamsDoc {
    /// Delete dead rows created (outbox) or received (inbox) strictly before this time.
    before: DateTime<Utc>,
    /// Only dead rows of this event type.
    #[param(schema_with = event_type_schema)]
    event_type: Option<String>,
}

impl PurgeParams {
    fn event_type(&self) -> Result<Option<String>, ApiError> {
        self.event_type
            .as_deref()
            .map(event_type)
            .transpose()
            .map_err(|m| ApiError::bad_request("invalid_event_type", m))
    }

    fn before(&self) -> Result<DateTime<Utc>, ApiError> {
        let before = self.before.as_deref().ok_or_else(|| {
            ApiError::bad_request("invalid_before", "before (RFC 3339) is required")
        })?;
        parse_before(before)
    }
}

/// What a purge deleted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: u64,
}

impl Deleted {
    fn new(deleted: u64, table: &str) -> Self {
        tracing::info!(deleted, table, "dead messages purged by an operator");
        Deleted { deleted }
    }
}

/// Delete dead outbox rows older than `before`.
#[utoipa::path(delete, path = "/admin/outbox/dead", tag = "admin", security(("admin_token" = [])),
    params(PurgeParamsDoc),
    responses((status = 200, description = "how many were deleted", body = Deleted),
        (status = 400, description = "before missing or invalid, or event_type invalid", body = ErrorBody), AdminErrors))]
async fn purge_outbox(
    State(s): State<AdminState>,
    Query(p): Query<PurgeParams>,
) -> Result<Json<Deleted>, ApiError> {
    let deleted =
        admin::purge_dead_outbox(&s.pool, p.before()?, p.event_type()?.as_deref()).await?;
    Ok(Json(Deleted::new(deleted, "outbox")))
}

/// Delete dead inbox rows older than `before`.
#[utoipa::path(delete, path = "/admin/inbox/dead", tag = "admin", security(("admin_token" = [])),
    params(PurgeParamsDoc),
    responses((status = 200, description = "how many were deleted", body = Deleted),
        (status = 400, description = "before missing or invalid, or event_type invalid", body = ErrorBody), AdminErrors))]
async fn purge_inbox(
    State(s): State<AdminState>,
    Query(p): Query<PurgeParams>,
) -> Result<Json<Deleted>, ApiError> {
    let deleted = admin::purge_dead_inbox(&s.pool, p.before()?, p.event_type()?.as_deref()).await?;
    Ok(Json(Deleted::new(deleted, "inbox")))
}

/// One requeued row.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequeuedOne {
    pub requeued: Uuid,
}

/// Requeue one dead outbox row.
#[utoipa::path(post, path = "/admin/outbox/{id}/requeue", tag = "admin", security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "the outbox message id")),
    responses((status = 200, description = "requeued", body = RequeuedOne),
        (status = 400, description = "id is not a UUID", body = ErrorBody), AdminErrors))]
async fn requeue_outbox(
    State(s): State<AdminState>,
    Path(id): Path<Uuid>,
) -> Result<Json<RequeuedOne>, ApiError> {
    if outbox::requeue_dead(&s.pool, id, s.message_ttl).await? {
        tracing::info!(message_id = %id, "dead outbox message requeued by an operator");
        return Ok(Json(RequeuedOne { requeued: id }));
    }
    Err(ApiError::NotFound(format!("no dead outbox message {id}")))
}

/// Requeue one dead inbox row (409 for poison: nothing readable to run again).
#[utoipa::path(post, path = "/admin/inbox/{id}/requeue", tag = "admin", security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "the inbox message id")),
    responses((status = 200, description = "requeued", body = RequeuedOne),
        (status = 400, description = "id is not a UUID", body = ErrorBody),
        (status = 409, description = "poison: cannot be run again", body = ErrorBody), AdminErrors))]
async fn requeue_inbox(
    State(s): State<AdminState>,
    Path(id): Path<Uuid>,
) -> Result<Json<RequeuedOne>, ApiError> {
    if inbox::requeue_dead(&s.pool, id).await? {
        tracing::info!(message_id = %id, "dead inbox message requeued by an operator");
        return Ok(Json(RequeuedOne { requeued: id }));
    }
    if admin::is_dead_poison(&s.pool, id).await? {
        return Err(ApiError::Conflict {
            code: "not_requeueable",
            message: format!(
                "inbox message {id} is poison (unreadable): there is nothing to run again"
            ),
        });
    }
    Err(ApiError::NotFound(format!("no dead inbox message {id}")))
}

/// The message tables' admin routes, as mounted under `/admin`, for a service's OpenAPI
/// document.
#[derive(OpenApi)]
#[openapi(
    paths(
        stats,
        list_outbox,
        list_inbox,
        dead_outbox,
        dead_inbox,
        purge_outbox,
        purge_inbox,
        requeue_many_outbox,
        requeue_many_inbox,
        requeue_outbox,
        requeue_inbox,
        queue_counts
    ),
    modifiers(&AdminSecurity)
)]
pub struct AdminDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_anything_else_is_refused() {
        let key = PageKey {
            at: DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(key)).unwrap(), key);
        for bad in [
            "",
            "x",
            "1.",
            ".abc",
            "12.not-a-uuid",
            "99999999999999999999.0",
        ] {
            let err = decode_cursor(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_cursor", "{bad}");
        }
    }

    #[test]
    fn a_page_request_checks_each_parameter() {
        let page = |p: ListParams| p.page().map(|_| ()).map_err(|e| e.code());
        let limit = |v: &str| ListParams {
            limit: Some(v.into()),
            ..Default::default()
        };
        assert_eq!(page(limit("500")), Ok(()));
        for bad in ["0", "501", "-1", "ten"] {
            assert_eq!(page(limit(bad)), Err("invalid_limit"), "{bad}");
        }
        let before = ListParams {
            before: Some("yesterday".into()),
            ..Default::default()
        };
        assert_eq!(page(before), Err("invalid_before"));
        assert!(parse_status(Some("dead"), &OutboxStatus::ALL).is_ok());
        let err = parse_status(Some("zombie"), &InboxStatus::ALL).unwrap_err();
        assert_eq!(err.code(), "invalid_status");
    }
}
