//! What the mechanism's tests share: a database with the message tables the crate creates,
//! plus one small business table of the tests' own, a handler whose effect is a row in it,
//! one that only counts, and a consumer started on its own task.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use message_table::{
    amqp::BrokerLink,
    inbox::{
        HandlerError, Inbox, InboxMessage, InboxStatus, Incoming, MessageHandler,
        consumer::InboxConsumer,
    },
};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use test_kit::TestDb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The tests' business table: one row per handled message (`effects`), and `notes`, a table
/// a business transaction writes next to its outbox row.
const TEST_TABLES: &str = "
    CREATE TABLE effects (
        id         bigserial PRIMARY KEY,
        message_id uuid      NOT NULL,
        payload    jsonb     NOT NULL
    );
    CREATE TABLE notes (
        id   uuid PRIMARY KEY,
        body text NOT NULL CHECK (body <> '')
    );";

/// A fresh database: the message tables (created by the crate) and the tests' own tables.
pub async fn test_db() -> TestDb {
    let db = TestDb::with_message_tables().await;
    sqlx::raw_sql(TEST_TABLES).execute(&db.pool).await.unwrap();
    db
}

/// Writes its effect (a row in `effects`), then fails the first `failures` runs with a
/// transient error: the effect must be rolled back with each failure. A payload with
/// `"permanent": true` is refused as permanent (before any effect).
pub struct RecordingHandler {
    failures_left: AtomicU32,
}

impl RecordingHandler {
    pub fn new() -> Arc<Self> {
        Self::failing(0)
    }

    pub fn failing(failures: u32) -> Arc<Self> {
        Arc::new(Self {
            failures_left: AtomicU32::new(failures),
        })
    }
}

#[async_trait]
impl MessageHandler for RecordingHandler {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        for msg in msgs {
            if msg.payload["permanent"] == true {
                return Err(HandlerError::Permanent(
                    "the handler cannot understand it".into(),
                ));
            }
            sqlx::query("INSERT INTO effects (message_id, payload) VALUES ($1, $2)")
                .bind(msg.message_id)
                .bind(&msg.payload)
                .execute(&mut *tx)
                .await?;
            if self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(HandlerError::Transient(anyhow::anyhow!("simulated outage")));
            }
        }
        Ok(())
    }
}

/// Counts the messages it handles; panics on a payload `{"boom": true}` (a handler bug).
struct CountingHandler(Arc<AtomicUsize>);

#[async_trait]
impl MessageHandler for CountingHandler {
    async fn handle(
        &self,
        _tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        for msg in msgs {
            if msg.payload["boom"] == true {
                panic!("handler bug");
            }
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// An inbox on `pool` whose handler is a [`CountingHandler`], and its count.
pub fn counting_inbox(pool: &PgPool) -> (Inbox, Arc<AtomicUsize>) {
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(CountingHandler(handled.clone()));
    (
        Inbox::new(pool.clone(), handler, test_kit::fast_inbox()),
        handled,
    )
}

/// Runs `consumer` on its own task and returns once it is connected: its link, the token
/// that stops it, and its task.
pub async fn run_connected(
    consumer: InboxConsumer,
) -> (BrokerLink, CancellationToken, JoinHandle<()>) {
    let link = consumer.broker_link();
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    test_kit::eventually("consumer connected", Duration::from_secs(10), || async {
        link.is_connected().then_some(())
    })
    .await;
    (link, stop, task)
}

/// A well-formed delivery with a fresh message id.
pub fn incoming(payload: Value) -> Incoming {
    Incoming {
        message_id: Some(Uuid::now_v7().to_string()),
        event_type: Some("TestEvent".into()),
        content_type: Some("application/json".into()),
        timestamp: None,
        headers: json!({}),
        body: serde_json::to_vec(&payload).unwrap(),
    }
}

/// The message id of a delivery made by [`incoming`].
pub fn id_of(incoming: &Incoming) -> Uuid {
    incoming.message_id.as_deref().unwrap().parse().unwrap()
}

/// How many committed effects a message had.
pub async fn effects(pool: &PgPool, message_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE message_id = $1")
        .bind(message_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Status, attempts and last error of an inbox row.
pub async fn inbox_row(pool: &PgPool, message_id: Uuid) -> (InboxStatus, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, last_error FROM inbox WHERE message_id = $1")
        .bind(message_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The properties a test publishes a message with: a type, JSON, a fresh message id.
pub fn props() -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_type(lapin::types::ShortString::from("Test"))
        .with_content_type(lapin::types::ShortString::from("application/json"))
        .with_message_id(lapin::types::ShortString::from(Uuid::now_v7().to_string()))
}

/// A pool of one connection to `url` whose session has `setting = value`.
pub async fn one_connection_with(url: &str, setting: &str, value: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .options([(setting, value)]),
        )
        .await
        .unwrap()
}
