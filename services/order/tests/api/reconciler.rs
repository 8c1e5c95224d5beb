//! One reconciliation pass at a time, across instances: the advisory lock.

use std::time::Duration;

use message_table::advisory_lock::AdvisoryLock;
use order::reconciler::{LOCK_KEY, Reconciler, ReconcilerConfig, pay_client};
use test_kit::TestDb;

fn reconciler(db: &TestDb) -> Reconciler {
    let cfg = ReconcilerConfig {
        // Nothing is stale in this database: pay is never asked.
        pay_url: "http://127.0.0.1:9".into(),
        interval: Duration::from_millis(100),
        pending_after: Duration::from_secs(60),
        batch_size: 10,
    };
    Reconciler::new(
        db.pool.clone(),
        cfg,
        Duration::from_secs(3600),
        pay_client().unwrap(),
    )
}

#[tokio::test]
async fn a_second_runner_skips_its_turn_while_another_holds_the_lock() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let (first, second) = (reconciler(&db), reconciler(&db));

    let held = AdvisoryLock::try_acquire(&db.pool, LOCK_KEY)
        .await
        .unwrap()
        .expect("the lock is free");
    assert_eq!(second.run_once().await.unwrap(), None);
    assert_eq!(second.reports().lock().unwrap().since_start.skipped, 1);
    held.unlock().await;

    let report = first
        .run_once()
        .await
        .unwrap()
        .expect("the lock is free again");
    assert_eq!((report.looked_at, report.error), (0, None));
    // The pass released the lock when it ended.
    assert!(second.run_once().await.unwrap().is_some());
}

#[test]
fn settings_out_of_bounds_are_refused() {
    let ok = ReconcilerConfig {
        pay_url: "http://pay:8762".into(),
        interval: Duration::from_secs(60),
        pending_after: Duration::from_secs(300),
        batch_size: 100,
    };
    ok.validate().unwrap();
    for (bad, variable) in [
        (
            ReconcilerConfig {
                batch_size: 101,
                ..ok.clone()
            },
            "RECONCILER_BATCH_SIZE",
        ),
        (
            ReconcilerConfig {
                batch_size: 0,
                ..ok.clone()
            },
            "RECONCILER_BATCH_SIZE",
        ),
        (
            ReconcilerConfig {
                interval: Duration::ZERO,
                ..ok.clone()
            },
            "RECONCILER_INTERVAL_SECS",
        ),
        (
            ReconcilerConfig {
                pay_url: "pay:8762".into(),
                ..ok.clone()
            },
            "ORDER_PAY_URL",
        ),
    ] {
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(variable), "{err}");
    }
}
