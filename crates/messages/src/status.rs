//! The payment states pay reports, as types.
//!
//! A payment's `status` column is `text` with a `CHECK` (pay's migrations); in Rust it is
//! [`PaymentStatus`], bound as a query parameter. Pay's lookup answers one more state for
//! an order it has no payment for, [`LookupStatus::Unknown`], which is never stored: that
//! is why it is a type of its own. Order's reconciler reads the lookup with the same type.

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
    /// Pay has no payment for the order: it never saw (or never handled) its `OrderCreated`.
    Unknown,
}

impl PaymentStatus {
    pub const ALL: [Self; 2] = [Self::Completed, Self::Failed];

    /// The text stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
}

impl From<PaymentStatus> for LookupStatus {
    fn from(status: PaymentStatus) -> Self {
        match status {
            PaymentStatus::Completed => Self::Completed,
            PaymentStatus::Failed => Self::Failed,
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

    const SCHEMA: &str = include_str!("../../../sql/pay/0001_accounts_payments.sql");

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
        }
        assert_eq!(
            serde_json::to_value(LookupStatus::Unknown).unwrap(),
            "UNKNOWN"
        );
    }
}
