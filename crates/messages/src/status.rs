//! The payment states pay reports, as types.
//!
//! A payment's `status` column is `text` with a `CHECK` (pay's migrations); in Rust it is
//! [`PaymentStatus`], bound as a query parameter. Pay's lookup answers one more state for
//! an order it has no payment for, [`LookupStatus::Unknown`], which is never stored: that
//! is why it is a type of its own. Order's reconciler reads the lookup with the same type.
//!
//! A payment row is written once per order (`payments.order_id` is unique) and moves at most
//! once more:
//!
//! ```text
//!   (no row) ──OrderCreated, debited──────────► COMPLETED ──OrderCancelled──► REFUNDED
//!            ──OrderCreated, refused──────────► FAILED
//!            ──OrderCancelled, before any──────► CANCELLED (the tombstone: a later
//!              OrderCreated finds the row and charges nothing)
//! ```

use std::fmt;

/// The state of a payment (pay's `payments.status`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "sqlx",
    derive(sqlx::Type),
    sqlx(type_name = "text", rename_all = "SCREAMING_SNAKE_CASE")
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// The account was debited.
    Completed,
    /// Refused: unknown user or insufficient funds (`failure_reason` says which).
    Failed,
    /// No payment: the order was cancelled before pay charged it. The row is a tombstone
    /// that keeps any later `OrderCreated` for the order from charging.
    Cancelled,
    /// Was [`Self::Completed`]; the amount was credited back (a `refunds` row says when).
    Refunded,
}

/// What pay knows about an order, as `POST /payments/lookup` answers it (read from the
/// column as a [`PaymentStatus`], never stored itself).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LookupStatus {
    /// Its payment is [`PaymentStatus::Completed`].
    Completed,
    /// Its payment is [`PaymentStatus::Failed`].
    Failed,
    /// Its payment is [`PaymentStatus::Cancelled`] (never charged).
    Cancelled,
    /// Its payment is [`PaymentStatus::Refunded`].
    Refunded,
    /// Pay has no payment for the order: it never saw (or never handled) its `OrderCreated`.
    Unknown,
}

impl PaymentStatus {
    pub const ALL: [Self; 4] = [
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Refunded,
    ];

    /// The text stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::Refunded => "REFUNDED",
        }
    }
}

impl LookupStatus {
    /// The text the lookup answers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Completed => PaymentStatus::Completed.as_str(),
            Self::Failed => PaymentStatus::Failed.as_str(),
            Self::Cancelled => PaymentStatus::Cancelled.as_str(),
            Self::Refunded => PaymentStatus::Refunded.as_str(),
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl From<PaymentStatus> for LookupStatus {
    fn from(status: PaymentStatus) -> Self {
        match status {
            PaymentStatus::Completed => Self::Completed,
            PaymentStatus::Failed => Self::Failed,
            PaymentStatus::Cancelled => Self::Cancelled,
            PaymentStatus::Refunded => Self::Refunded,
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The migration that last set the states' `CHECK`.
    const SCHEMA: &str = include_str!("../../../sql/pay/0002_cancel_refund.sql");

    #[test]
    fn the_schema_allows_exactly_the_payment_states() {
        let quoted: Vec<String> = PaymentStatus::ALL
            .iter()
            .map(|s| format!("'{s}'"))
            .collect();
        let check = format!("CHECK (status IN ({}))", quoted.join(", "));
        assert!(SCHEMA.contains(&check), "{check}");
    }

    #[test]
    fn states_serialize_as_their_column_text_and_a_lookup_as_its_payment() {
        for status in PaymentStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
            assert_eq!(
                serde_json::to_value(LookupStatus::from(status)).unwrap(),
                json
            );
            assert_eq!(LookupStatus::from(status).as_str(), status.as_str());
        }
        assert_eq!(
            serde_json::to_value(LookupStatus::Unknown).unwrap(),
            "UNKNOWN"
        );
        assert_eq!(LookupStatus::Unknown.as_str(), "UNKNOWN");
    }
}
