//! An order's states, as a type.
//!
//! The `orders.status` column is `text` with a `CHECK` (`sql/order`); in Rust it is
//! [`OrderStatus`], bound as a query parameter, so a misspelt state is a compile error
//! rather than an update that silently matches nothing. An order leaves
//! [`OrderStatus::PendingPayment`] once, through `payment_results::settle`.
//!
//! One predicate spells the state out, [`PENDING`]: the reconciler's query is served by the
//! partial index `orders_pending`, which PostgreSQL uses only when the query's predicate
//! implies the index's at plan time, and a bound parameter does not (the same reason as the
//! message tables' predicates in `message_table::status`). The tests below check it against
//! the enum and the migration.

use std::fmt;

/// The state of an order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    sqlx::Type,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Taken; its `OrderCreated` is on its way to pay, or pay's answer on its way back.
    PendingPayment,
    /// Pay debited the account.
    Paid,
    /// Pay refused (`failure_reason` says why).
    PaymentFailed,
}

impl OrderStatus {
    pub const ALL: [Self; 3] = [Self::PendingPayment, Self::Paid, Self::PaymentFailed];

    /// The text stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "PENDING_PAYMENT",
            Self::Paid => "PAID",
            Self::PaymentFailed => "PAYMENT_FAILED",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Orders waiting for pay's answer: the predicate of the `orders_pending` index.
pub const PENDING: &str = "status = 'PENDING_PAYMENT'";

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../../sql/order/0001_orders.sql");
    const PENDING_INDEX: &str = include_str!("../../../sql/order/0002_orders_pending.sql");

    #[test]
    fn the_written_out_predicate_names_the_typed_state_and_is_the_index_s() {
        assert_eq!(
            PENDING,
            format!("status = '{}'", OrderStatus::PendingPayment)
        );
        assert!(PENDING_INDEX.contains(&format!("WHERE {PENDING};")));
    }

    #[test]
    fn the_schema_allows_exactly_the_typed_states() {
        let quoted: Vec<String> = OrderStatus::ALL.iter().map(|s| format!("'{s}'")).collect();
        let check = format!("CHECK (status IN ({}))", quoted.join(", "));
        assert!(SCHEMA.contains(&check), "{check}");
    }

    #[test]
    fn states_serialize_as_their_column_text() {
        for status in OrderStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }
}
