//! After the contract run: the invariants across order's and pay's databases of the stack
//! `scripts/contract-test.sh` started, once the orders schemathesis placed have settled.
//!
//! Ignored in a plain `cargo test` (it needs that stack); the script runs it with
//! `--ignored`, after schemathesis, with the stack's `ORDER_DATABASE_URL` and
//! `PAY_DATABASE_URL`, `CONTRACT_BALANCES_BEFORE` (the sum of pay's balances before
//! schemathesis ran) and `CONTRACT_SETTLE_SECS` (how long the orders may take to settle).
//!
//! The two databases are compared here, never by a query that crosses them: every order has
//! its outbox row; every payment's order exists in order's database; every order settled,
//! with its payment row in the state its status says (`PAID` exactly when that payment is
//! `COMPLETED`; a cancelled order's payment refunded, or never charged); money is conserved.

use std::collections::BTreeMap;
use std::time::Duration;

use messages::PaymentStatus;
use order::OrderStatus;
use sqlx::PgPool;
use uuid::Uuid;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (scripts/contract-test.sh)"))
}

/// Whether an order's status and its payment row (pay's) say the same, once both settled.
/// An order waiting for pay (`PENDING_PAYMENT`, `CANCEL_REQUESTED`) agrees with nothing yet.
fn agree(order: OrderStatus, payment: Option<PaymentStatus>) -> bool {
    use OrderStatus as O;
    use PaymentStatus as P;
    matches!(
        (order, payment),
        (O::Paid, Some(P::Completed))
            | (O::PaymentFailed, Some(P::Failed))
            | (O::Cancelled, Some(P::Cancelled | P::Failed))
            | (O::Refunded, Some(P::Refunded))
    )
}

/// The (id, status) rows `sql` selects, by id.
async fn statuses<S>(db: &PgPool, sql: &'static str) -> BTreeMap<Uuid, S>
where
    S: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    sqlx::query_as::<_, (Uuid, S)>(sql)
        .fetch_all(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .collect()
}

#[tokio::test]
#[ignore = "run by scripts/contract-test.sh against its stack"]
async fn the_two_databases_agree_after_the_contract_run() {
    let order_db = PgPool::connect(&env("ORDER_DATABASE_URL"))
        .await
        .expect("order_db");
    let pay_db = PgPool::connect(&env("PAY_DATABASE_URL"))
        .await
        .expect("pay_db");
    let balances_before: i64 = env("CONTRACT_BALANCES_BEFORE").parse().expect("cents");
    let settle: u64 = env("CONTRACT_SETTLE_SECS").parse().expect("seconds");

    // Settled: every order agrees with its payment (a cancel's answer may still be on its
    // way when a payment's has arrived, so it is the pair that is waited for).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(settle);
    let (orders, payments) = loop {
        let orders: BTreeMap<Uuid, OrderStatus> =
            statuses(&order_db, "SELECT id, status FROM orders").await;
        let payments: BTreeMap<Uuid, PaymentStatus> =
            statuses(&pay_db, "SELECT order_id, status FROM payments").await;
        let settled = orders
            .iter()
            .all(|(id, status)| agree(*status, payments.get(id).copied()));
        if settled || tokio::time::Instant::now() >= deadline {
            break (orders, payments);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(!orders.is_empty(), "schemathesis placed orders");
    let without_outbox: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM outbox x WHERE x.id = o.message_id)",
    )
    .fetch_one(&order_db)
    .await
    .expect("orders without their outbox row");
    assert_eq!(without_outbox, 0, "no order without its outbox row");

    let orphans: Vec<_> = payments
        .keys()
        .filter(|id| !orders.contains_key(id))
        .collect();
    assert!(
        orphans.is_empty(),
        "no payment without an order: {orphans:?}"
    );
    for (id, status) in &orders {
        let payment = payments.get(id).copied();
        assert!(
            agree(*status, payment),
            "every order settled within {settle} s, as its payment says: {id} is {status}, its payment {payment:?}"
        );
    }

    let balances: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(balance_cents), 0)::bigint FROM accounts")
            .fetch_one(&pay_db)
            .await
            .expect("balances");
    let completed: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount_cents), 0)::bigint FROM payments WHERE status = $1",
    )
    .bind(PaymentStatus::Completed)
    .fetch_one(&pay_db)
    .await
    .expect("completed payments");
    assert_eq!(
        balances + completed,
        balances_before,
        "money is conserved: balances + completed payments = the balances before (a refund is back on its account)"
    );
}
