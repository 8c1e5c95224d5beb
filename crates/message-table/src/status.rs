//! The states of the message tables' rows, as types.
//!
//! A row's `status` column is `text` with a `CHECK` (see the migrations); in Rust it is one
//! of these enums, bound as a query parameter, so a misspelt state is a compile error
//! rather than a query that silently matches nothing.
//!
//! # Why a few predicates still spell the state out
//! The hot queries (the relay's claim, the resend scheduler's tick, the retry sweeper) are
//! served by *partial* indexes (`... WHERE status = 'pending' AND claim_token IS NULL`).
//! PostgreSQL uses a partial index only when it can prove, at plan time, that the query's
//! predicate implies the index's; with `status = $1` a cached generic plan cannot, and the
//! claim would scan every `sent` row kept for a week. So those predicates are written out,
//! once each, here ([`CLAIMABLE`], [`IN_FLIGHT`], [`WAITING`], [`AWAITING_RETRY`],
//! [`RETRY_DUE`]); the tests
//! below check them against the enums and the migrations' indexes.

use std::fmt;

/// The state of an `outbox` row.
///
/// Whether a `pending` row is held by a relay is not a state of its own but the presence
/// of a claim token ([`IN_FLIGHT`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, serde::Serialize, serde::Deserialize,
)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum OutboxStatus {
    /// Waiting to be published (or being published, when claimed).
    Pending,
    /// Acked by the broker and not returned: the broker is responsible for it.
    Sent,
    /// Attempts exhausted or expired: kept for an operator, never retried by itself.
    Dead,
}

impl OutboxStatus {
    pub const ALL: [Self; 3] = [Self::Pending, Self::Sent, Self::Dead];

    /// The text stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Dead => "dead",
        }
    }
}

/// The state of an `inbox` row.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, serde::Serialize, serde::Deserialize,
)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum InboxStatus {
    /// The handler's effect committed with this row: the message id is remembered.
    Processed,
    /// A technical failure; the retry sweeper runs it again at `next_attempt_at`.
    Failed,
    /// Permanent failure, attempts exhausted, poison or too old: waits for an operator.
    Dead,
    /// Arrived before the message of its aggregate it follows was applied: applied right
    /// after that one (see [`crate::inbox`], "Order per aggregate").
    Parked,
}

impl InboxStatus {
    pub const ALL: [Self; 4] = [Self::Processed, Self::Failed, Self::Dead, Self::Parked];

    /// The text stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Parked => "parked",
        }
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for InboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outbox rows waiting in line: pending and not held by a relay (due or not, expired or
/// not). The predicate of the `outbox_due` and `outbox_expiry` indexes.
pub const WAITING: &str = "status = 'pending' AND claim_token IS NULL";

/// Outbox rows a relay may claim now: waiting, due, not expired.
pub const CLAIMABLE: &str = "status = 'pending' AND claim_token IS NULL \
     AND next_attempt_at <= now() AND expires_at > now()";

/// Outbox rows held by a relay: pending with a claim token (and so a lease).
pub const IN_FLIGHT: &str = "status = 'pending' AND claim_token IS NOT NULL";

/// Inbox rows waiting for the retry sweeper, due or not: the `inbox_retry_due` index.
pub const AWAITING_RETRY: &str = "status = 'failed'";

/// Inbox rows the retry sweeper runs again now.
pub const RETRY_DUE: &str = "status = 'failed' AND next_attempt_at <= now()";

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../migrations/0001_outbox_inbox.sql");
    /// Where the inbox's states were last widened (`parked`).
    const ORDER: &str = include_str!("../migrations/0005_aggregate_order.sql");

    #[test]
    fn the_written_out_predicates_name_the_typed_states() {
        let pending = format!("status = '{}'", OutboxStatus::Pending);
        for predicate in [WAITING, CLAIMABLE, IN_FLIGHT] {
            assert!(predicate.starts_with(&pending), "{predicate}");
        }
        assert!(CLAIMABLE.starts_with(WAITING));
        assert_eq!(
            AWAITING_RETRY,
            format!("status = '{}'", InboxStatus::Failed)
        );
        assert!(RETRY_DUE.starts_with(AWAITING_RETRY));
    }

    #[test]
    fn the_written_out_predicates_match_the_partial_indexes() {
        assert!(SCHEMA.contains(&format!("WHERE {WAITING};")));
        assert!(SCHEMA.contains(&format!(
            "ON inbox (next_attempt_at) WHERE {AWAITING_RETRY};"
        )));
        assert!(SCHEMA.contains("ON outbox (lease_expires_at) WHERE claim_token IS NOT NULL;"));
    }

    #[test]
    fn the_schema_allows_exactly_the_typed_states() {
        let list = |states: &[&str]| {
            let quoted: Vec<String> = states.iter().map(|s| format!("'{s}'")).collect();
            format!("CHECK (status IN ({}))", quoted.join(", "))
        };
        assert!(SCHEMA.contains(&list(&OutboxStatus::ALL.map(OutboxStatus::as_str))));
        let inbox = list(&InboxStatus::ALL.map(InboxStatus::as_str));
        assert!(ORDER.contains(&inbox));
    }

    #[test]
    fn states_serialize_as_their_column_text() {
        assert_eq!(
            serde_json::to_value(OutboxStatus::Pending).unwrap(),
            "pending"
        );
        assert_eq!(
            serde_json::to_value(InboxStatus::Processed).unwrap(),
            "processed"
        );
    }
}
