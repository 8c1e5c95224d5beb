//! Pay's answers, received through the order service's inbox: `PaymentCompleted` and
//! `PaymentFailed` about a payment, `PaymentRefunded` and `PaymentCancelled` about the
//! compensation of a cancelled order. Each moves the order through
//! [`transition::apply`](crate::transition::apply), the one place an order changes state,
//! or leaves it as the state machine says (`crate::status`); [`settle`] is the same for the
//! reconciler, which settles an order whose answer never arrived from what pay says over
//! HTTP.
//!
//! The inbox has already deduplicated the message and runs this handler in the transaction
//! that marks it processed. The answers may arrive in any order: a `PaymentCompleted` that
//! finds its order cancelled changes nothing (pay refunds that charge when the
//! `OrderCancelled` reaches it, and its `PaymentRefunded` moves the order on); only an
//! answer that contradicts the order's history is refused, and recorded `dead`.
//!
//! # Batches
//! Under load the inbox hands over a batch of answers in one transaction
//! ([`MessageHandler::handle`]). Applied one by one, a batch of N costs N `UPDATE`s;
//! `apply_all` applies it in two statements: it locks the orders in id order (the
//! [`MessageHandler::lock_key`], so concurrent batches do not deadlock) and reads their
//! states, then moves them all in one `UPDATE`, each guarded by the state it was read in.
//! That is the common case, every answer about its own order and moving it or kept (an
//! order the reconciler settled first: after a backlog older than its threshold, most
//! answers are such, and a batch that fell back for each would settle one order per
//! commit). Anything else (an answer the machine refuses, an unknown order, two answers
//! about one order) is not decided there: the handler says [`HandlerError::OneAtATime`], the inbox
//! rolls the batch back and hands each answer over alone, and [`transition::apply`] decides
//! it as it always does. A single answer goes to it directly: the per-message path stays
//! the reference.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use message_table::inbox::{HandlerError, InboxMessage, MessageHandler};
use messages::{PaymentCancelled, PaymentRefunded, PaymentResult};
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    status::{OrderEvent, OrderStatus, Step},
    transition::{self, Applied, TransitionError},
};

/// What pay decided about an order's payment (the reconciler reads it from pay's lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Completed,
    Failed { reason: Option<String> },
}

impl PaymentOutcome {
    /// The event it is for the order.
    pub fn event(&self) -> OrderEvent {
        match self {
            Self::Completed => OrderEvent::PaymentCompleted,
            Self::Failed { .. } => OrderEvent::PaymentFailed,
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Self::Completed => None,
            Self::Failed { reason } => reason.as_deref(),
        }
    }
}

/// Applies pay's decision about order `order_id`'s payment, in the caller's transaction:
/// the same [`transition::apply`] the answer message runs.
pub async fn settle(
    tx: &mut PgConnection,
    order_id: Uuid,
    outcome: &PaymentOutcome,
) -> Result<Applied, TransitionError> {
    let applied = transition::apply(tx, order_id, outcome.event(), outcome.reason()).await?;
    log_applied(order_id, outcome.event(), &applied);
    Ok(applied)
}

fn log_applied(order_id: Uuid, event: OrderEvent, applied: &Applied) {
    match applied {
        Applied::Moved(status) => tracing::info!(%order_id, %event, %status, "order settled"),
        Applied::Kept { status, why } => {
            tracing::info!(%order_id, %event, %status, why, "answer changes nothing")
        }
    }
}

pub struct PaymentResultHandler;

/// One answer: the order it is about, what it is for the order, and pay's reason for a
/// failed payment.
#[derive(Debug)]
struct Answer {
    order_id: Uuid,
    event: OrderEvent,
    reason: Option<String>,
}

fn payload<T: DeserializeOwned>(msg: &InboxMessage) -> Result<T, HandlerError> {
    serde_json::from_value(msg.payload.clone())
        .map_err(|e| HandlerError::Permanent(format!("invalid {} payload: {e}", msg.event_type)))
}

/// The answer a message carries; `Permanent` when it is not one this handler knows.
fn read_answer(msg: &InboxMessage) -> Result<Answer, HandlerError> {
    let event = OrderEvent::of_answer(&msg.event_type).ok_or_else(|| {
        HandlerError::Permanent(format!("unexpected event type {:?}", msg.event_type))
    })?;
    let (order_id, reason) = match event {
        OrderEvent::PaymentCompleted => (payload::<PaymentResult>(msg)?.order_id, None),
        OrderEvent::PaymentFailed => {
            let answer: PaymentResult = payload(msg)?;
            (answer.order_id, answer.reason)
        }
        OrderEvent::PaymentRefunded => (payload::<PaymentRefunded>(msg)?.order_id, None),
        OrderEvent::PaymentCancelled => (payload::<PaymentCancelled>(msg)?.order_id, None),
        OrderEvent::Cancel => unreachable!("of_answer gives pay's answers only"),
    };
    Ok(Answer {
        order_id,
        event,
        reason,
    })
}

#[async_trait]
impl MessageHandler for PaymentResultHandler {
    /// One answer: [`transition::apply`]. Several: `apply_all`, when each is about its own
    /// order and moves it; otherwise [`HandlerError::OneAtATime`] (see the module docs).
    async fn handle(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        let answers = msgs
            .iter()
            .map(|m| read_answer(m))
            .collect::<Result<Vec<_>, _>>()?;
        if let [answer] = answers.as_slice() {
            let span = tracing::info_span!("settle", order_id = %answer.order_id);
            let applied = async {
                let applied =
                    transition::apply(tx, answer.order_id, answer.event, answer.reason.as_deref())
                        .await?;
                log_applied(answer.order_id, answer.event, &applied);
                Ok::<_, TransitionError>(applied)
            }
            .instrument(span)
            .await;
            return match applied {
                Ok(_) => Ok(()),
                Err(TransitionError::Database(e)) => Err(e.into()),
                // A contradicting answer or an unknown order: recorded dead.
                Err(e) => Err(HandlerError::Permanent(e.to_string())),
            };
        }
        let orders: HashSet<Uuid> = answers.iter().map(|a| a.order_id).collect();
        if orders.len() < answers.len() {
            return Err(HandlerError::OneAtATime("two answers about one order"));
        }
        apply_all(tx, msgs, &answers).await
    }

    /// The order the answer moves: a batch locks its orders in id order. The id is
    /// written in its one canonical form, whose string order is PostgreSQL's `uuid` order.
    fn lock_key(&self, msg: &InboxMessage) -> Option<String> {
        let id = msg.payload.get("order_id")?.as_str()?;
        Uuid::parse_str(id).ok().map(|id| id.to_string())
    }
}

/// [`transition::apply`] for answers about distinct orders, all at once: `Ok` when every
/// answer moves its order or is one the state machine keeps. Anything else is left to
/// [`transition::apply`]: [`HandlerError::OneAtATime`], and the inbox hands each answer over
/// alone.
async fn apply_all(
    tx: &mut PgConnection,
    msgs: &[&InboxMessage],
    answers: &[Answer],
) -> Result<(), HandlerError> {
    let all: Vec<Uuid> = answers.iter().map(|a| a.order_id).collect();
    // Locked first, in id order (ORDER BY runs before FOR UPDATE locks each row it
    // returns): concurrent batches over the same orders queue instead of deadlocking.
    let current: HashMap<Uuid, OrderStatus> =
        sqlx::query_as("SELECT id, status FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&all)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    // What the state machine says of each: a move, or nothing to do (an order the reconciler
    // settled before its answer came, as after a backlog older than its threshold). Only a
    // refusal or an unknown order needs the answer alone, to be recorded dead by itself.
    let mut moves = Vec::with_capacity(answers.len());
    let mut kept = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        match current
            .get(&answer.order_id)
            .map(|s| (*s, answer.event.at(*s)))
        {
            Some((from, Step::Move(to))) => moves.push((i, from, to)),
            Some((status, Step::Keep(why))) => kept.push((i, Applied::Kept { status, why })),
            Some((_, Step::Refuse)) | None => {
                return Err(HandlerError::OneAtATime(
                    "an answer that contradicts its order, or about no order",
                ));
            }
        }
    }
    let ids: Vec<Uuid> = moves.iter().map(|&(i, ..)| answers[i].order_id).collect();
    let from: Vec<OrderStatus> = moves.iter().map(|&(_, from, _)| from).collect();
    let to: Vec<OrderStatus> = moves.iter().map(|&(.., to)| to).collect();
    let reasons: Vec<Option<&str>> = moves
        .iter()
        .map(|&(i, ..)| answers[i].reason.as_deref())
        .collect();
    // Each order guarded by the state it was read in (and is locked in).
    let moved = sqlx::query(
        "UPDATE orders o SET status = a.to_status,
                failure_reason = coalesce(a.reason, o.failure_reason), updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
              AS a(id, from_status, to_status, reason)
         WHERE o.id = a.id AND o.status = a.from_status",
    )
    .bind(&ids)
    .bind(&from)
    .bind(&to)
    .bind(&reasons)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved != ids.len() as u64 {
        // The rows are locked since they were read: this cannot happen, and if it did,
        // nothing of this batch may commit.
        return Err(HandlerError::Transient(anyhow::anyhow!(
            "{moved} of {} orders moved under their locks",
            ids.len()
        )));
    }
    let applied = moves
        .into_iter()
        .map(|(i, _, to)| (i, Applied::Moved(to)))
        .chain(kept);
    // The lines apply writes, each in its message's span.
    for (i, applied) in applied {
        let (msg, answer) = (msgs[i], &answers[i]);
        let _in_message = msg.span.enter();
        let _in_settle = tracing::info_span!("settle", order_id = %answer.order_id).entered();
        log_applied(answer.order_id, answer.event, &applied);
    }
    Ok(())
}
