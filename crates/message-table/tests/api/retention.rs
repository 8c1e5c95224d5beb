//! Retention of the local message tables, against a real database: what is deleted, what is
//! kept, in bounded batches, by one runner at a time.

use std::time::Duration;

use message_table::{
    InboxStatus, OutboxStatus,
    outbox::{self, NewMessage},
    retention::{LOCK_KEY, Purged, RetentionConfig, RetentionRunner},
};
use serde_json::json;
use sqlx::PgPool;
use test_kit::TestDb;
use uuid::Uuid;

/// `n` outbox rows in `status`, created and (if sent) sent `age_days` ago.
async fn outbox_rows(pool: &PgPool, n: usize, status: OutboxStatus, age_days: i32) {
    let mut tx = pool.begin().await.unwrap();
    for i in 0..n {
        let msg = NewMessage::new(
            Uuid::now_v7(),
            "TestEvent",
            "test.created",
            json!({ "n": i }),
        );
        outbox::enqueue(&mut tx, &msg, Duration::from_secs(3600))
            .await
            .unwrap();
        sqlx::query(
            "UPDATE outbox SET status = $2,
                    created_at = now() - make_interval(days => $3),
                    sent_at = CASE WHEN $4 THEN now() - make_interval(days => $3) END
             WHERE id = $1",
        )
        .bind(msg.id)
        .bind(status)
        .bind(age_days)
        .bind(status == OutboxStatus::Sent)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// `n` inbox rows in `status`, received (and if processed, processed) `age_days` ago.
async fn inbox_rows(pool: &PgPool, n: usize, status: InboxStatus, age_days: i32) {
    for _ in 0..n {
        sqlx::query(
            "INSERT INTO inbox (message_id, event_type, payload, status, attempts, received_at, processed_at)
             VALUES ($1, 'TestEvent', '{}', $2, 1, now() - make_interval(days => $3),
                     CASE WHEN $4 THEN now() - make_interval(days => $3) END)",
        )
        .bind(Uuid::now_v7())
        .bind(status)
        .bind(age_days)
        .bind(status == InboxStatus::Processed)
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn outbox_counts(pool: &PgPool) -> Vec<(OutboxStatus, i64)> {
    sqlx::query_as("SELECT status, count(*) FROM outbox GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn inbox_counts(pool: &PgPool) -> Vec<(InboxStatus, i64)> {
    sqlx::query_as("SELECT status, count(*) FROM inbox GROUP BY status ORDER BY status")
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

#[tokio::test]
async fn retention_deletes_old_sent_and_processed_rows_only_in_bounded_batches() {
    let db = TestDb::with_message_tables().await;
    outbox_rows(&db.pool, 25, OutboxStatus::Sent, 8).await; // past retention: deleted
    outbox_rows(&db.pool, 3, OutboxStatus::Sent, 1).await; // recent: kept
    outbox_rows(&db.pool, 2, OutboxStatus::Pending, 8).await; // never deleted, however old
    outbox_rows(&db.pool, 2, OutboxStatus::Dead, 30).await; // waits for an operator
    inbox_rows(&db.pool, 12, InboxStatus::Processed, 8).await;
    inbox_rows(&db.pool, 2, InboxStatus::Processed, 1).await;
    inbox_rows(&db.pool, 1, InboxStatus::Failed, 30).await;
    inbox_rows(&db.pool, 1, InboxStatus::Dead, 30).await;

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
        outbox_counts(&db.pool).await,
        [
            (OutboxStatus::Dead, 2),
            (OutboxStatus::Pending, 2),
            (OutboxStatus::Sent, 3)
        ]
    );
    assert_eq!(
        inbox_counts(&db.pool).await,
        [
            (InboxStatus::Dead, 1),
            (InboxStatus::Failed, 1),
            (InboxStatus::Processed, 2)
        ]
    );
    // A second pass finds nothing left to delete.
    let again = runner(&db, 10).run_once().await.unwrap().unwrap();
    assert_eq!((again.outbox_rows, again.inbox_rows), (0, 0));
}

#[tokio::test]
async fn only_one_runner_at_a_time_works_on_a_database() {
    let db = TestDb::with_message_tables().await;
    outbox_rows(&db.pool, 5, OutboxStatus::Sent, 8).await;

    // Another instance is in the middle of a pass: it holds the advisory lock.
    let mut other = db.pool.acquire().await.unwrap();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(locked);
    assert_eq!(runner(&db, 10).run_once().await.unwrap(), None);
    assert_eq!(outbox_counts(&db.pool).await, [(OutboxStatus::Sent, 5)]);

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
