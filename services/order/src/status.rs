//! An order's states and the events that move it: the state machine, in one place.
//!
//! The `orders.status` column is `text` with a `CHECK` (`sql/order`); in Rust it is
//! [`OrderStatus`], bound as a query parameter, so a misspelt state is a compile error
//! rather than an update that silently matches nothing. What each [`OrderEvent`] does to an
//! order in each state is [`OrderEvent::at`], one `match`; the code that moves orders
//! (`crate::transition`) only asks it, and guards every move in SQL with the states it
//! allows (`WHERE status = ANY(…)`), so two transactions racing on one order cannot both
//! move it.
//!
//! ```text
//!                    PaymentCompleted              cancel
//!   PENDING_PAYMENT ─────────────────► PAID ─────────────────► CANCEL_REQUESTED
//!     │   │                                                        │ PaymentRefunded
//!     │   │ PaymentFailed                                          ▼
//!     │   └──────────────► PAYMENT_FAILED                       REFUNDED
//!     │ cancel                                                     ▲
//!     └──────────────────► CANCELLED ──────PaymentRefunded─────────┘
//!                          (PaymentCancelled: stays; PaymentCompleted / PaymentFailed
//!                           arriving late: stays, pay's compensation answers for them)
//! ```
//!
//! Pay's answers can arrive in any order and more than once, so an event that finds the
//! order past it is not always an error: [`Step::Keep`] says it changes nothing (a copy
//! of an answer already applied, or an answer overtaken by a cancellation whose
//! compensation is on its way). Only an answer that contradicts the order's history is
//! [`Step::Refuse`]: it is recorded `dead` in the inbox for a person to look at.
//!
//! One predicate spells a state out, [`PENDING`]: the reconciler's query is served by the
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
    /// Paid, then cancelled by the client: its `OrderCancelled` asks pay for the refund.
    CancelRequested,
    /// Cancelled by the client before pay's answer arrived. Pay either never charges it
    /// (`PaymentCancelled`) or, if it already had, refunds it (`PaymentRefunded`).
    Cancelled,
    /// Pay credited the amount back.
    Refunded,
}

impl OrderStatus {
    pub const ALL: [Self; 6] = [
        Self::PendingPayment,
        Self::Paid,
        Self::PaymentFailed,
        Self::CancelRequested,
        Self::Cancelled,
        Self::Refunded,
    ];

    /// The text stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "PENDING_PAYMENT",
            Self::Paid => "PAID",
            Self::PaymentFailed => "PAYMENT_FAILED",
            Self::CancelRequested => "CANCEL_REQUESTED",
            Self::Cancelled => "CANCELLED",
            Self::Refunded => "REFUNDED",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What may happen to an order: pay's four answers, and the client's cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderEvent {
    /// `PaymentCompleted`: pay debited the account.
    PaymentCompleted,
    /// `PaymentFailed`: pay refused the payment.
    PaymentFailed,
    /// `POST /orders/{id}/cancel`.
    Cancel,
    /// `PaymentRefunded`: pay credited the charge back.
    PaymentRefunded,
    /// `PaymentCancelled`: pay charged nothing and never will.
    PaymentCancelled,
}

/// What an event does to an order in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The order moves to this state.
    Move(OrderStatus),
    /// Nothing changes, and that is right (why, for the log).
    Keep(&'static str),
    /// The event contradicts the order's state.
    Refuse,
}

impl OrderEvent {
    pub const ALL: [Self; 5] = [
        Self::PaymentCompleted,
        Self::PaymentFailed,
        Self::Cancel,
        Self::PaymentRefunded,
        Self::PaymentCancelled,
    ];

    /// The state machine: what this event does to an order that is `status`.
    pub const fn at(self, status: OrderStatus) -> Step {
        use OrderStatus as S;
        use Step::{Keep, Move, Refuse};
        match (self, status) {
            (Self::PaymentCompleted, S::PendingPayment) => Move(S::Paid),
            (Self::PaymentCompleted, S::Paid | S::CancelRequested | S::Refunded) => {
                Keep("already paid")
            }
            // The race: cancelled while the answer was in flight. The OrderCancelled
            // committed with the cancel makes pay refund this charge.
            (Self::PaymentCompleted, S::Cancelled) => Keep("cancelled; pay refunds the charge"),
            (Self::PaymentCompleted, S::PaymentFailed) => Refuse,

            (Self::PaymentFailed, S::PendingPayment) => Move(S::PaymentFailed),
            (Self::PaymentFailed, S::PaymentFailed) => Keep("already failed"),
            (Self::PaymentFailed, S::Cancelled) => Keep("cancelled; nothing was charged"),
            (Self::PaymentFailed, S::Paid | S::CancelRequested | S::Refunded) => Refuse,

            (Self::Cancel, S::PendingPayment) => Move(S::Cancelled),
            (Self::Cancel, S::Paid) => Move(S::CancelRequested),
            (Self::Cancel, S::PaymentFailed | S::CancelRequested | S::Cancelled | S::Refunded) => {
                Refuse
            }

            (Self::PaymentRefunded, S::CancelRequested | S::Cancelled) => Move(S::Refunded),
            (Self::PaymentRefunded, S::Refunded) => Keep("already refunded"),
            (Self::PaymentRefunded, S::PendingPayment | S::Paid | S::PaymentFailed) => Refuse,

            (Self::PaymentCancelled, S::Cancelled) => Keep("cancelled; nothing was charged"),
            (
                Self::PaymentCancelled,
                S::PendingPayment | S::Paid | S::PaymentFailed | S::CancelRequested | S::Refunded,
            ) => Refuse,
        }
    }

    /// The moves this event makes, `(from, to)`: what its SQL guard allows.
    pub fn moves(self) -> Vec<(OrderStatus, OrderStatus)> {
        OrderStatus::ALL
            .into_iter()
            .filter_map(|from| match self.at(from) {
                Step::Move(to) => Some((from, to)),
                _ => None,
            })
            .collect()
    }

    /// The name the event has in messages and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PaymentCompleted => messages::PAYMENT_COMPLETED.name,
            Self::PaymentFailed => messages::PAYMENT_FAILED.name,
            Self::Cancel => "cancel",
            Self::PaymentRefunded => messages::PAYMENT_REFUNDED.name,
            Self::PaymentCancelled => messages::PAYMENT_CANCELLED.name,
        }
    }

    /// The answer a message of type `event_type` carries, if it is one of pay's.
    pub fn of_answer(event_type: &str) -> Option<Self> {
        [
            Self::PaymentCompleted,
            Self::PaymentFailed,
            Self::PaymentRefunded,
            Self::PaymentCancelled,
        ]
        .into_iter()
        .find(|e| e.as_str() == event_type)
    }
}

impl fmt::Display for OrderEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Orders waiting for pay's answer: the predicate of the `orders_pending` index.
pub const PENDING: &str = "status = 'PENDING_PAYMENT'";

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The migration that last set the states' `CHECK`.
    const SCHEMA: &str = include_str!("../../../sql/order/0004_cancellations.sql");
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

    /// The machine has no cycle (each move goes to a state of higher rank), so an order
    /// settles after at most a few moves; and every state but the start is reachable.
    #[test]
    fn every_move_goes_forward_and_every_state_is_reached() {
        let rank = |s: OrderStatus| match s {
            OrderStatus::PendingPayment => 0,
            OrderStatus::Paid | OrderStatus::PaymentFailed | OrderStatus::Cancelled => 1,
            OrderStatus::CancelRequested => 2,
            OrderStatus::Refunded => 3,
        };
        let mut reached = HashSet::from([OrderStatus::PendingPayment]);
        for event in OrderEvent::ALL {
            for (from, to) in event.moves() {
                assert!(rank(to) > rank(from), "{event}: {from} -> {to}");
                reached.insert(to);
            }
        }
        assert_eq!(reached.len(), OrderStatus::ALL.len());
    }

    /// Only the client's cancel leaves a paid order, and pay's answers never move an order
    /// back to something it was.
    #[test]
    fn an_order_is_paid_only_from_pending_and_refunded_only_after_a_cancel() {
        assert_eq!(
            OrderEvent::PaymentCompleted.moves(),
            [(OrderStatus::PendingPayment, OrderStatus::Paid)]
        );
        assert_eq!(
            OrderEvent::PaymentRefunded.moves(),
            [
                (OrderStatus::CancelRequested, OrderStatus::Refunded),
                (OrderStatus::Cancelled, OrderStatus::Refunded)
            ]
        );
        assert_eq!(
            OrderEvent::Cancel.moves(),
            [
                (OrderStatus::PendingPayment, OrderStatus::Cancelled),
                (OrderStatus::Paid, OrderStatus::CancelRequested)
            ]
        );
        assert!(OrderEvent::PaymentCancelled.moves().is_empty());
    }

    #[test]
    fn every_answer_is_known_by_its_message_name() {
        for event in OrderEvent::ALL {
            let found = OrderEvent::of_answer(event.as_str());
            assert_eq!(found.is_some(), event != OrderEvent::Cancel, "{event}");
        }
        assert_eq!(OrderEvent::of_answer("OrderCreated"), None);
    }
}
