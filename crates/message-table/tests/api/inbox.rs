//! The inbox against a real database, with a small test handler whose effect is a row of its
//! own: a message's effect commits once however often it arrives, failures are retried with
//! backoff and rolled back each time, exhausted or permanent failures end dead.

use std::time::Duration;

use message_table::inbox::{self, Inbox, InboxStatus, Outcome, retry_sweeper::RetrySweeper};
use serde_json::json;
use support::{RecordingHandler, effects, id_of, inbox_row, incoming};

use crate::support;

#[tokio::test]
async fn the_same_message_twice_has_one_effect() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let msg = incoming(json!({ "n": 1 }));

    assert_eq!(
        inbox.receive(msg.clone()).await.unwrap(),
        Outcome::Processed
    );
    assert_eq!(
        inbox.receive(msg.clone()).await.unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(effects(&db.pool, id_of(&msg)).await, 1);
    assert_eq!(
        inbox_row(&db.pool, id_of(&msg)).await,
        (InboxStatus::Processed, 1, None)
    );
    let counts = inbox.counters().snapshot();
    assert_eq!((counts.processed, counts.duplicates), (1, 1));
}

#[tokio::test]
async fn concurrent_copies_of_a_message_have_one_effect() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let msg = incoming(json!({ "n": 1 }));

    let outcomes = futures::future::join_all((0..8).map(|_| inbox.receive(msg.clone()))).await;
    let processed = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Processed)))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Duplicate)))
        .count();
    assert_eq!((processed, duplicates), (1, 7), "{outcomes:?}");
    assert_eq!(effects(&db.pool, id_of(&msg)).await, 1);
}

/// The inbox remembers ids for its retention (7 days in the test settings). A message created
/// before that window may be a copy of one processed and forgotten: it is dead, without
/// effect, until an operator requeues it.
#[tokio::test]
async fn a_message_older_than_the_inbox_memory_is_dead_without_effect_until_requeued() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let now = chrono::Utc::now().timestamp() as u64;

    let mut old = incoming(json!({ "n": "old" }));
    old.timestamp = Some(now - 8 * 24 * 3600);
    match inbox.receive(old.clone()).await.unwrap() {
        Outcome::Dead { reason } => assert!(
            reason.contains("before the inbox retention window"),
            "{reason}"
        ),
        other => panic!("expected dead, got {other:?}"),
    }
    assert_eq!(effects(&db.pool, id_of(&old)).await, 0);
    let (status, attempts, _) = inbox_row(&db.pool, id_of(&old)).await;
    assert_eq!((status, attempts), (InboxStatus::Dead, 0));
    // Another copy is a duplicate of the dead row, not a second chance.
    assert_eq!(
        inbox.receive(old.clone()).await.unwrap(),
        Outcome::Duplicate
    );

    // A recent message (an hour old) is processed as usual.
    let mut recent = incoming(json!({ "n": "recent" }));
    recent.timestamp = Some(now - 3600);
    assert_eq!(
        inbox.receive(recent.clone()).await.unwrap(),
        Outcome::Processed
    );
    assert_eq!(effects(&db.pool, id_of(&recent)).await, 1);

    // The operator checked the old message never took effect, and requeues it.
    assert!(inbox::requeue_dead(&db.pool, id_of(&old)).await.unwrap());
    RetrySweeper::new(&inbox).run_once().await.unwrap();
    assert_eq!(effects(&db.pool, id_of(&old)).await, 1);
    assert_eq!(
        inbox_row(&db.pool, id_of(&old)).await.0,
        InboxStatus::Processed
    );
}

#[tokio::test]
async fn a_handler_that_fails_twice_is_retried_with_backoff_and_its_effect_commits_once() {
    let db = support::test_db().await;
    let mut cfg = test_kit::fast_inbox();
    cfg.retry.base = Duration::from_secs(10); // long enough to see, not to wait for
    cfg.retry.max = Duration::from_secs(60);
    let inbox = Inbox::new(db.pool.clone(), RecordingHandler::failing(2), cfg);
    let sweeper = RetrySweeper::new(&inbox);
    let msg = incoming(json!({ "n": 1 }));
    let id = id_of(&msg);

    let first = inbox.receive(msg).await.unwrap();
    assert!(
        matches!(first, Outcome::Failed { attempts: 1, .. }),
        "{first:?}"
    );
    // The failure is durable (the delivery may be acked) and its effect rolled back.
    let (status, attempts, error) = inbox_row(&db.pool, id).await;
    assert_eq!((status, attempts), (InboxStatus::Failed, 1));
    assert_eq!(error.as_deref(), Some("simulated outage"));
    let backed_off: bool = sqlx::query_scalar(
        // First retry: 10 s with equal jitter, so at least 5 s away.
        "SELECT next_attempt_at > now() + interval '4 seconds' FROM inbox WHERE message_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(backed_off, "the retry is scheduled later, not immediately");
    assert_eq!(effects(&db.pool, id).await, 0);

    assert_eq!(
        sweeper.run_once().await.unwrap(),
        Default::default(),
        "not due yet: not retried"
    );
    test_kit::eventually(
        "the sweeper processes the message",
        Duration::from_secs(10),
        || async {
            // Time passes: make the backed-off retry due.
            sqlx::query("UPDATE inbox SET next_attempt_at = now() WHERE message_id = $1")
                .bind(id)
                .execute(&db.pool)
                .await
                .unwrap();
            sweeper.run_once().await.unwrap();
            let (status, attempts, _) = inbox_row(&db.pool, id).await;
            (status == InboxStatus::Processed).then_some(attempts)
        },
    )
    .await;
    let (_, attempts, _) = inbox_row(&db.pool, id).await;
    assert_eq!(attempts, 3, "two failures, then success");
    assert_eq!(effects(&db.pool, id).await, 1);
    let c = inbox.counters().snapshot();
    assert_eq!((c.failed, c.processed), (2, 1));
}

#[tokio::test]
async fn exhausted_attempts_end_dead_with_the_last_error_and_can_be_requeued() {
    let db = support::test_db().await;
    let mut cfg = test_kit::fast_inbox();
    cfg.retry.max_attempts = 3;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::failing(u32::MAX),
        cfg.clone(),
    );
    let sweeper = RetrySweeper::new(&inbox);
    let msg = incoming(json!({ "n": 1 }));
    let id = id_of(&msg);

    inbox.receive(msg).await.unwrap();
    test_kit::eventually("the message is dead", Duration::from_secs(10), || async {
        sweeper.run_once().await.unwrap();
        (inbox_row(&db.pool, id).await.0 == InboxStatus::Dead).then_some(())
    })
    .await;
    let (_, attempts, error) = inbox_row(&db.pool, id).await;
    assert_eq!(attempts, 3);
    assert_eq!(error.as_deref(), Some("simulated outage"));
    assert_eq!(effects(&db.pool, id).await, 0);
    // Dead is final: the sweeper leaves it alone.
    assert_eq!(sweeper.run_once().await.unwrap(), Default::default());

    // An operator requeues it once the cause is fixed.
    assert!(inbox::requeue_dead(&db.pool, id).await.unwrap());
    let healthy = Inbox::new(db.pool.clone(), RecordingHandler::new(), cfg);
    RetrySweeper::new(&healthy).run_once().await.unwrap();
    assert_eq!(inbox_row(&db.pool, id).await.0, InboxStatus::Processed);
    assert_eq!(effects(&db.pool, id).await, 1);
}

#[tokio::test]
async fn a_permanent_error_is_dead_at_once_and_never_retried() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let msg = incoming(json!({ "permanent": true }));
    let id = id_of(&msg);

    let outcome = inbox.receive(msg).await.unwrap();
    assert!(matches!(outcome, Outcome::Dead { .. }), "{outcome:?}");
    let (status, attempts, error) = inbox_row(&db.pool, id).await;
    assert_eq!((status, attempts), (InboxStatus::Dead, 1));
    assert_eq!(error.as_deref(), Some("the handler cannot understand it"));
    assert_eq!(
        RetrySweeper::new(&inbox).run_once().await.unwrap(),
        Default::default()
    );
    assert_eq!(inbox.counters().snapshot().dead, 1);
}

/// One sweep tries a failing row once, even when its backoff is shorter than the sweep:
/// otherwise a round would burn several attempts of the same message at once.
#[tokio::test]
async fn one_sweep_retries_a_failing_message_once() {
    let db = support::test_db().await;
    let mut cfg = test_kit::fast_inbox();
    cfg.retry.base = Duration::ZERO; // due again at once
    cfg.retry.max = Duration::ZERO;
    cfg.retry.max_attempts = 50;
    let inbox = Inbox::new(db.pool.clone(), RecordingHandler::failing(u32::MAX), cfg);
    let msg = incoming(json!({ "n": 1 }));
    let id = id_of(&msg);
    inbox.receive(msg).await.unwrap();

    let report = RetrySweeper::new(&inbox).run_once().await.unwrap();
    assert_eq!(report.failed, 1);
    assert_eq!(inbox_row(&db.pool, id).await.1, 2, "one retry in one sweep");
}
