//! Retention of the local message tables, against a real database: what is deleted, what is
//! kept, in bounded batches, by one runner at a time; and the start-up checks, on configs
//! built in code: the inbox remembers message ids for as long as copies can arrive, and a
//! lease outlasts the confirm window.

use std::time::Duration;

use message_service::service::MessagingConfig;
use message_table::{
    outbox::{self, NewMessage},
    retention::{LOCK_KEY, Purged, RetentionConfig, RetentionRunner},
};
use order::{Application, OrderConfig};
use serde_json::json;
use sqlx::PgPool;
use test_kit::TestDb;
use uuid::Uuid;

/// `n` outbox rows in `status`, created and (if sent) sent `age_days` ago.
async fn outbox_rows(pool: &PgPool, n: usize, status: &str, age_days: i32) {
    let mut tx = pool.begin().await.unwrap();
    for i in 0..n {
        let msg = NewMessage::new(
            Uuid::now_v7(),
            "OrderCreated",
            "order.created",
            json!({ "n": i }),
        );
        outbox::enqueue(&mut tx, &msg, Duration::from_secs(3600))
            .await
            .unwrap();
        sqlx::query(
            "UPDATE outbox SET status = $2,
                    created_at = now() - make_interval(days => $3),
                    sent_at = CASE WHEN $2 = 'sent' THEN now() - make_interval(days => $3) END
             WHERE id = $1",
        )
        .bind(msg.id)
        .bind(status)
        .bind(age_days)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// `n` inbox rows in `status`, received (and if processed, processed) `age_days` ago.
async fn inbox_rows(pool: &PgPool, n: usize, status: &str, age_days: i32) {
    for _ in 0..n {
        sqlx::query(
            "INSERT INTO inbox (message_id, event_type, payload, status, attempts, received_at, processed_at)
             VALUES ($1, 'PaymentCompleted', '{}', $2, 1, now() - make_interval(days => $3),
                     CASE WHEN $2 = 'processed' THEN now() - make_interval(days => $3) END)",
        )
        .bind(Uuid::now_v7())
        .bind(status)
        .bind(age_days)
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn counts(pool: &PgPool, table: &str) -> Vec<(String, i64)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT status, count(*) FROM {table} GROUP BY status ORDER BY status"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

fn runner(db: &TestDb, batch_size: i64) -> RetentionRunner {
    // Both retentions are 7 days in the test settings.
    RetentionRunner::new(
        db.pool.clone(),
        &test_kit::fast_outbox(),
        &test_kit::fast_inbox(),
        RetentionConfig {
            interval: Duration::from_secs(600),
            batch_size,
        },
    )
}

fn owned(rows: &[(&str, i64)]) -> Vec<(String, i64)> {
    rows.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

#[tokio::test]
async fn retention_deletes_old_sent_and_processed_rows_only_in_bounded_batches() {
    let db = TestDb::new(&order::MIGRATOR).await;
    outbox_rows(&db.pool, 25, "sent", 8).await; // past retention: deleted
    outbox_rows(&db.pool, 3, "sent", 1).await; // recent: kept
    outbox_rows(&db.pool, 2, "pending", 8).await; // never deleted, however old
    outbox_rows(&db.pool, 2, "dead", 30).await; // waits for an operator
    inbox_rows(&db.pool, 12, "processed", 8).await;
    inbox_rows(&db.pool, 2, "processed", 1).await;
    inbox_rows(&db.pool, 1, "failed", 30).await;
    inbox_rows(&db.pool, 1, "dead", 30).await;

    let purged = runner(&db, 10).run_once().await.unwrap();

    // 25 rows in batches of 10 (10, 10, 5) and 12 in (10, 2): five statements.
    assert_eq!(
        purged,
        Some(Purged {
            outbox_rows: 25,
            inbox_rows: 12,
            batches: 5
        })
    );
    assert_eq!(
        counts(&db.pool, "outbox").await,
        owned(&[("dead", 2), ("pending", 2), ("sent", 3)])
    );
    assert_eq!(
        counts(&db.pool, "inbox").await,
        owned(&[("dead", 1), ("failed", 1), ("processed", 2)])
    );
    // A second pass finds nothing left to delete.
    let again = runner(&db, 10).run_once().await.unwrap().unwrap();
    assert_eq!((again.outbox_rows, again.inbox_rows), (0, 0));
}

#[tokio::test]
async fn only_one_runner_at_a_time_works_on_a_database() {
    let db = TestDb::new(&order::MIGRATOR).await;
    outbox_rows(&db.pool, 5, "sent", 8).await;

    // Another instance is in the middle of a pass: it holds the advisory lock.
    let mut other = db.pool.acquire().await.unwrap();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(locked);
    assert_eq!(runner(&db, 10).run_once().await.unwrap(), None);
    assert_eq!(counts(&db.pool, "outbox").await, owned(&[("sent", 5)]));

    // Once it is done, the next pass runs, and releases the lock after itself.
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    let purged = runner(&db, 10).run_once().await.unwrap().unwrap();
    assert_eq!(purged.outbox_rows, 5);
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(free, "the runner kept the lock after its pass");
}

/// Builds order with the test messaging settings changed by `change`, which must make
/// `Service::build` refuse it; the error.
async fn refused_at_start_up(change: impl FnOnce(&mut MessagingConfig)) -> String {
    let db = TestDb::new(&order::MIGRATOR).await;
    let amqp = test_kit::test_amqp();
    let mut messaging =
        test_kit::messaging(&amqp, "test.order", order::config::PAYMENT_RESULT_KEYS);
    change(&mut messaging);
    let cfg = OrderConfig {
        addr: "127.0.0.1:0".into(),
        database_url: db.url.clone(),
        db_max_connections: 5,
        messaging,
    };
    match Application::build(cfg).await {
        Ok(_) => panic!("a configuration that can process a message twice started"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn an_inbox_retention_shorter_than_the_redelivery_horizon_is_refused_at_start_up() {
    let err = refused_at_start_up(|messaging| {
        // Messages may be published for a day; the inbox would remember them for an hour.
        messaging.outbox.message_ttl = Duration::from_secs(24 * 3600);
        messaging.inbox.retention = Duration::from_secs(3600);
    })
    .await;
    assert!(
        err.contains("INBOX_RETENTION_SECS (3600s) is shorter than the redelivery horizon"),
        "{err}"
    );
    assert!(err.contains("OUTBOX_MESSAGE_TTL_SECS 86400s"), "{err}");
}

/// Configs built in code go through the same checks as settings from the environment.
#[tokio::test]
async fn a_config_built_in_code_with_a_lease_too_short_is_refused_at_start_up() {
    let err = refused_at_start_up(|messaging| {
        // A lease that can expire while its window is in flight: duplicates.
        messaging.outbox.lease = messaging.outbox.confirm_timeout + Duration::from_secs(1);
    })
    .await;
    assert!(
        err.contains("OUTBOX_LEASE_MS") && err.contains("OUTBOX_CONFIRM_TIMEOUT_MS"),
        "{err}"
    );
}
