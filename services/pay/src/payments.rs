//! The payment handler: what pay does with `OrderCreated` (pay the order) and
//! `OrderCancelled` (undo it).
//!
//! It runs inside the inbox's transaction (see `message_table::inbox`), so the inbox row, the
//! debit or credit, the payment or refund row and the reply message commit together or not
//! at all. A duplicate message never reaches this code; and even a second message about the
//! same order (another message id) cannot pay twice: `payments.order_id` is unique.
//!
//! Business failures are outcomes, not errors: an unknown user or insufficient funds is
//! recorded as a FAILED payment and answered with `PaymentFailed`. It is not retried.
//!
//! # Undoing an order
//! A payment row moves once more at most (`messages::PaymentStatus` draws it). On
//! `OrderCancelled`:
//! - pay has no row for the order (the cancel overtook the `OrderCreated`, or the order was
//!   cancelled before pay saw it): it writes a `CANCELLED` row, the tombstone, and answers
//!   `PaymentCancelled`. The `OrderCreated`, whenever it arrives, finds the row through the
//!   unique `order_id` and charges nothing.
//! - the payment is `COMPLETED` (the order was paid, or the cancel raced the payment's
//!   answer): `UPDATE … SET status = 'REFUNDED' WHERE status = 'COMPLETED'`, rows checked;
//!   a `refunds` row (primary key `order_id`); the amount credited back; `PaymentRefunded`.
//!   A refund is only ever of a completed payment, and only once.
//! - the payment is `FAILED`: nothing was charged, `PaymentCancelled`.
//! - the row is already `CANCELLED` or `REFUNDED`: an earlier cancellation answered it.
//!
//! A payment and a cancellation of one order may be handled at the same moment by two
//! transactions. Both lock the order's account first (the [`MessageHandler::lock_key`], in
//! one order in every batch), so one waits for the other, then sees what it committed: the
//! charge (and refunds it) or the tombstone (and charges nothing). Without an account (an
//! unknown user) nothing is ever charged, and the unique `order_id` alone decides which row
//! is written.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use async_trait::async_trait;
use message_table::{
    inbox::{HandlerError, InboxMessage, MessageHandler},
    outbox::{self, NewMessage},
};
use messages::{
    Event, ORDER_CANCELLED, ORDER_CREATED, OrderCancelled, OrderCreated, PAYMENT_CANCELLED,
    PAYMENT_COMPLETED, PAYMENT_FAILED, PAYMENT_REFUNDED, PaymentCancelled, PaymentRefunded,
    PaymentResult, PaymentStatus,
};
use sqlx::PgConnection;
use uuid::Uuid;

pub struct PaymentHandler {
    /// Time to live of the reply messages.
    message_ttl: Duration,
}

impl PaymentHandler {
    pub fn new(message_ttl: Duration) -> Self {
        Self { message_ttl }
    }
}

/// What a message asks of pay.
enum Request {
    Pay(OrderCreated),
    Undo(OrderCancelled),
}

/// What a message asks; `Permanent` when it cannot be a request pay knows.
fn read_request(msg: &InboxMessage) -> Result<Request, HandlerError> {
    let invalid = |e: serde_json::Error| {
        HandlerError::Permanent(format!("invalid {} payload: {e}", msg.event_type))
    };
    let (request, amount) = if msg.event_type == ORDER_CREATED.name {
        let order: OrderCreated = serde_json::from_value(msg.payload.clone()).map_err(invalid)?;
        let amount = order.amount_cents;
        (Request::Pay(order), amount)
    } else if msg.event_type == ORDER_CANCELLED.name {
        let cancel: OrderCancelled =
            serde_json::from_value(msg.payload.clone()).map_err(invalid)?;
        let amount = cancel.amount_cents;
        (Request::Undo(cancel), amount)
    } else {
        return Err(HandlerError::Permanent(format!(
            "unexpected event type {:?}",
            msg.event_type
        )));
    };
    if amount <= 0 {
        return Err(HandlerError::Permanent(format!("invalid amount {amount}")));
    }
    Ok(request)
}

#[async_trait]
impl MessageHandler for PaymentHandler {
    /// Pays the orders of the batch (`pay_all`), then undoes the cancelled ones
    /// (`undo_all`); a single message is a batch of one. Within one account the order of
    /// the messages matters (a refund may fund the next payment; an order and its
    /// cancellation), so a batch in which one account has both goes one message at a time,
    /// in the inbox's order: a batch does what its messages do one by one.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        let requests = msgs
            .iter()
            .map(|m| read_request(m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pays = (Vec::new(), Vec::new());
        let mut undos = (Vec::new(), Vec::new());
        for (msg, request) in msgs.iter().zip(requests) {
            match request {
                Request::Pay(order) => {
                    pays.0.push(*msg);
                    pays.1.push(order);
                }
                Request::Undo(cancel) => {
                    undos.0.push(*msg);
                    undos.1.push(cancel);
                }
            }
        }
        let paying: HashSet<&str> = pays.1.iter().map(|o| o.user_id.as_str()).collect();
        if undos.1.iter().any(|c| paying.contains(c.user_id.as_str())) {
            return Err(HandlerError::OneAtATime(
                "a payment and a cancellation of one account",
            ));
        }
        let users: Vec<&str> = paying
            .into_iter()
            .chain(undos.1.iter().map(|c| c.user_id.as_str()))
            .collect();
        let mut balances = lock_accounts(tx, &users).await?;
        let mut replies = Vec::with_capacity(msgs.len());
        if !pays.1.is_empty() {
            self.pay_all(tx, &pays.0, &pays.1, &mut balances, &mut replies)
                .await?;
        }
        if !undos.1.is_empty() {
            undo_all(tx, &undos.0, &undos.1, &mut replies).await?;
        }
        outbox::enqueue_all(tx, &replies, self.message_ttl).await?;
        Ok(())
    }

    /// The account the message debits or credits: a batch locks its accounts in one order.
    fn lock_key(&self, msg: &InboxMessage) -> Option<String> {
        msg.payload["user_id"].as_str().map(str::to_string)
    }
}

/// Locks the accounts of `users`, in one order (the lock key's): concurrent batches do not
/// deadlock on them. Their balances, as no one else can change them now; a user missing
/// here is unknown.
async fn lock_accounts(
    tx: &mut PgConnection,
    users: &[&str],
) -> Result<HashMap<String, i64>, HandlerError> {
    Ok(sqlx::query_as(
        "SELECT user_id, balance_cents FROM accounts WHERE user_id = ANY($1)
         ORDER BY user_id FOR UPDATE",
    )
    .bind(users)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect())
}

/// Why a debit did not happen: the account exists (so its balance was short) or not.
fn failure_reason(account_known: bool) -> &'static str {
    if account_known {
        "insufficient_funds"
    } else {
        "unknown_user"
    }
}

impl PaymentHandler {
    /// Pays `orders` (one per message of `msgs`, in that order) and adds the replies to
    /// `replies`, each in the trace of the message that asked: four statements, whatever
    /// the number of orders. Several orders of one account each see the balance the one
    /// before left: `balances` were read under their locks and the orders are decided
    /// here, in order, then each account is debited once by its total.
    async fn pay_all(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
        orders: &[OrderCreated],
        balances: &mut HashMap<String, i64>,
        replies: &mut Vec<NewMessage>,
    ) -> Result<(), HandlerError> {
        let users: Vec<&str> = orders.iter().map(|o| o.user_id.as_str()).collect();
        // The payment rows first: the unique order_id is the guard against paying twice,
        // and against paying an order whose cancellation came first (its tombstone).
        let payment_ids: Vec<Uuid> = orders.iter().map(|_| Uuid::now_v7()).collect();
        let order_ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
        let amounts: Vec<i64> = orders.iter().map(|o| o.amount_cents).collect();
        let message_ids: Vec<Uuid> = msgs.iter().map(|m| m.message_id).collect();
        // The payment ids that went in: two messages about one order in this batch insert
        // one payment, so it is the row, not the order id, that says which message pays.
        let inserted: HashSet<Uuid> = sqlx::query_scalar(
            "INSERT INTO payments (id, order_id, user_id, amount_cents, status, message_id)
             SELECT p.id, p.order_id, p.user_id, p.amount, $6, p.message_id
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::uuid[])
                  AS p(id, order_id, user_id, amount, message_id)
             ON CONFLICT (order_id) DO NOTHING
             RETURNING id",
        )
        .bind(&payment_ids)
        .bind(&order_ids)
        .bind(&users)
        .bind(&amounts)
        .bind(&message_ids)
        .bind(PaymentStatus::Completed)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        // Each new order in turn: paid when its account (still) holds its amount.
        let mut debits: HashMap<&str, i64> = HashMap::new();
        let paid: Vec<bool> = orders
            .iter()
            .zip(&payment_ids)
            .map(|(order, payment_id)| {
                let Some(balance) = balances.get_mut(&order.user_id) else {
                    return false;
                };
                if !inserted.contains(payment_id) || *balance < order.amount_cents {
                    return false;
                }
                *balance -= order.amount_cents;
                *debits.entry(order.user_id.as_str()).or_default() += order.amount_cents;
                true
            })
            .collect();
        let (debit_users, debit_totals): (Vec<&str>, Vec<i64>) = debits.into_iter().unzip();
        let debited = sqlx::query(
            "UPDATE accounts a SET balance_cents = a.balance_cents - d.amount, updated_at = now()
             FROM unnest($1::text[], $2::bigint[]) AS d(user_id, amount)
             WHERE a.user_id = d.user_id AND a.balance_cents >= d.amount",
        )
        .bind(&debit_users)
        .bind(&debit_totals)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if debited != debit_users.len() as u64 {
            // The rows are locked since the read above: this cannot happen, and if it did,
            // nothing of this batch may commit.
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "{} of {} accounts debited under their locks",
                debited,
                debit_users.len()
            )));
        }

        // Why an order was not paid now: a payment already there, or its tombstone. Read
        // only when some order was not new (rare).
        let taken: HashMap<Uuid, PaymentStatus> = if inserted.len() < orders.len() {
            sqlx::query_as("SELECT order_id, status FROM payments WHERE order_id = ANY($1)")
                .bind(&order_ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect()
        } else {
            HashMap::new()
        };

        let mut failed: Vec<(Uuid, &str)> = Vec::new();
        for (i, (msg, order)) in msgs.iter().zip(orders).enumerate() {
            let _in_span = msg.span.enter();
            let span = tracing::info_span!("payment", order_id = %order.order_id).entered();
            if !inserted.contains(&payment_ids[i]) {
                if taken.get(&order.order_id) == Some(&PaymentStatus::Cancelled) {
                    tracing::info!(order_id = %order.order_id, message_id = %msg.message_id, "order cancelled before it was paid; not charged");
                } else {
                    tracing::warn!(order_id = %order.order_id, message_id = %msg.message_id, "order already has a payment; message ignored");
                }
                continue;
            }
            let payment_id = payment_ids[i];
            let reply = if paid[i] {
                tracing::info!(order_id = %order.order_id, %payment_id, amount_cents = order.amount_cents, "payment completed");
                answer(PAYMENT_COMPLETED, order, payment_id, None)
            } else {
                let reason = failure_reason(balances.contains_key(&order.user_id));
                tracing::info!(order_id = %order.order_id, %payment_id, reason, "payment failed");
                failed.push((order.order_id, reason));
                answer(PAYMENT_FAILED, order, payment_id, Some(reason))
            };
            drop(span);
            replies.push(traced(reply, msg));
        }
        if !failed.is_empty() {
            let (ids, reasons): (Vec<Uuid>, Vec<&str>) = failed.into_iter().unzip();
            // Rows written above, in this transaction; the guard says which state they
            // leave all the same.
            let updated = sqlx::query(
                "UPDATE payments p SET status = $3, failure_reason = f.reason
                 FROM unnest($1::uuid[], $2::text[]) AS f(order_id, reason)
                 WHERE p.order_id = f.order_id AND p.status = $4",
            )
            .bind(&ids)
            .bind(&reasons)
            .bind(PaymentStatus::Failed)
            .bind(PaymentStatus::Completed)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != ids.len() as u64 {
                return Err(HandlerError::Transient(anyhow::anyhow!(
                    "{updated} of {} new payments marked failed",
                    ids.len()
                )));
            }
        }
        Ok(())
    }
}

/// A payment refunded by [`undo_all`].
#[derive(sqlx::FromRow)]
struct Refunded {
    order_id: Uuid,
    id: Uuid,
    user_id: String,
    amount_cents: i64,
}

/// Undoes the cancelled orders (one per message of `msgs`, in that order) and adds the
/// replies to `replies` (see the module docs): a tombstone for each order pay has no
/// payment for, a refund for each completed payment, `PaymentCancelled` when nothing was
/// charged. A handful of statements whatever the number of orders.
async fn undo_all(
    tx: &mut PgConnection,
    msgs: &[&InboxMessage],
    cancels: &[OrderCancelled],
    replies: &mut Vec<NewMessage>,
) -> Result<(), HandlerError> {
    let order_ids: Vec<Uuid> = cancels.iter().map(|c| c.order_id).collect();
    if order_ids.iter().collect::<HashSet<_>>().len() < order_ids.len() {
        return Err(HandlerError::OneAtATime("two cancellations of one order"));
    }
    let tombstone_ids: Vec<Uuid> = cancels.iter().map(|_| Uuid::now_v7()).collect();
    let users: Vec<&str> = cancels.iter().map(|c| c.user_id.as_str()).collect();
    let amounts: Vec<i64> = cancels.iter().map(|c| c.amount_cents).collect();
    let message_ids: Vec<Uuid> = msgs.iter().map(|m| m.message_id).collect();

    // Tombstones: the orders pay has no row for. The unique order_id decides against a
    // payment being written at the same moment: whichever commits first, the other finds it.
    let tombstoned: HashSet<Uuid> = sqlx::query_scalar(
        "INSERT INTO payments (id, order_id, user_id, amount_cents, status, message_id)
         SELECT t.id, t.order_id, t.user_id, t.amount, $6, t.message_id
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::uuid[])
              AS t(id, order_id, user_id, amount, message_id)
         ON CONFLICT (order_id) DO NOTHING
         RETURNING order_id",
    )
    .bind(&tombstone_ids)
    .bind(&order_ids)
    .bind(&users)
    .bind(&amounts)
    .bind(&message_ids)
    .bind(PaymentStatus::Cancelled)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    // Refunds: the completed payments among the others, each moved once by its guard.
    let paid_before: Vec<Uuid> = order_ids
        .iter()
        .filter(|id| !tombstoned.contains(id))
        .copied()
        .collect();
    let refunded: HashMap<Uuid, Refunded> = if paid_before.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, Refunded>(
            "UPDATE payments SET status = $2
             WHERE order_id = ANY($1) AND status = $3
             RETURNING order_id, id, user_id, amount_cents",
        )
        .bind(&paid_before)
        .bind(PaymentStatus::Refunded)
        .bind(PaymentStatus::Completed)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.order_id, r))
        .collect()
    };
    let mut credits: HashMap<&str, i64> = HashMap::new();
    let mut refund_rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (msg, cancel) in msgs.iter().zip(cancels) {
        let Some(r) = refunded.get(&cancel.order_id) else {
            continue;
        };
        // The account locked for this message is the one credited, or nothing is.
        if r.user_id != cancel.user_id {
            return Err(HandlerError::Permanent(format!(
                "order {} was paid from account {:?}, its cancellation names {:?}",
                cancel.order_id, r.user_id, cancel.user_id
            )));
        }
        *credits.entry(r.user_id.as_str()).or_default() += r.amount_cents;
        refund_rows.0.push(r.order_id);
        refund_rows.1.push(r.id);
        refund_rows.2.push(r.user_id.as_str());
        refund_rows.3.push(r.amount_cents);
        refund_rows.4.push(msg.message_id);
    }
    if !refund_rows.0.is_empty() {
        // One refund per order: the primary key stands behind the status guard.
        sqlx::query(
            "INSERT INTO refunds (order_id, payment_id, user_id, amount_cents, message_id)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::uuid[])",
        )
        .bind(&refund_rows.0)
        .bind(&refund_rows.1)
        .bind(&refund_rows.2)
        .bind(&refund_rows.3)
        .bind(&refund_rows.4)
        .execute(&mut *tx)
        .await?;
        let (credit_users, credit_totals): (Vec<&str>, Vec<i64>) = credits.into_iter().unzip();
        let credited = sqlx::query(
            "UPDATE accounts a SET balance_cents = a.balance_cents + c.amount, updated_at = now()
             FROM unnest($1::text[], $2::bigint[]) AS c(user_id, amount)
             WHERE a.user_id = c.user_id",
        )
        .bind(&credit_users)
        .bind(&credit_totals)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if credited != credit_users.len() as u64 {
            // A completed payment's account exists (it was debited): nothing may commit.
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "{credited} of {} accounts credited",
                credit_users.len()
            )));
        }
    }

    // The rest: failed payments (nothing charged), or orders an earlier cancellation
    // already undid. Read only when there are some.
    let rest: Vec<Uuid> = paid_before
        .iter()
        .filter(|id| !refunded.contains_key(id))
        .copied()
        .collect();
    let rest: HashMap<Uuid, PaymentStatus> = if rest.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as("SELECT order_id, status FROM payments WHERE order_id = ANY($1)")
            .bind(&rest)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };

    for (msg, cancel) in msgs.iter().zip(cancels) {
        let _in_span = msg.span.enter();
        let order_id = cancel.order_id;
        let _span = tracing::info_span!("undo", %order_id).entered();
        let reply = if let Some(r) = refunded.get(&order_id) {
            tracing::info!(%order_id, payment_id = %r.id, amount_cents = r.amount_cents, "payment refunded");
            reply(
                PAYMENT_REFUNDED,
                order_id,
                AnswerSeq::Second,
                messages::to_json(&PaymentRefunded {
                    order_id,
                    payment_id: r.id,
                    amount_cents: r.amount_cents,
                }),
            )
        } else if tombstoned.contains(&order_id)
            || rest.get(&order_id) == Some(&PaymentStatus::Failed)
        {
            tracing::info!(%order_id, "order cancelled before any charge; it will not be charged");
            // The tombstone is pay's first answer about the order; after a failed payment,
            // its second.
            let seq = if tombstoned.contains(&order_id) {
                AnswerSeq::First
            } else {
                AnswerSeq::Second
            };
            reply(
                PAYMENT_CANCELLED,
                order_id,
                seq,
                messages::to_json(&PaymentCancelled { order_id }),
            )
        } else {
            let status = rest.get(&order_id);
            tracing::warn!(%order_id, message_id = %msg.message_id, ?status, "order already undone; message ignored");
            continue;
        };
        replies.push(traced(reply, msg));
    }
    Ok(())
}

/// The reply, in the trace of the message that asked.
fn traced(reply: NewMessage, msg: &InboxMessage) -> NewMessage {
    let trace = common::trace::outgoing(common::trace::from_message(&msg.headers).as_ref());
    reply.with_header(common::trace::TRACEPARENT, trace.to_string())
}

/// The place of pay's answers about one order among them (order applies them in this
/// order). The payment row is their version: its insert (a payment or a tombstone) is
/// answered first, and its one later move (a refund), or the cancellation of a failed
/// payment, second; each under the row's lock, its insert's or its update's.
#[derive(Debug, Clone, Copy)]
enum AnswerSeq {
    First = 1,
    Second = 2,
}

fn reply(event: Event, order_id: Uuid, seq: AnswerSeq, payload: serde_json::Value) -> NewMessage {
    NewMessage::new(order_id, event.name, event.routing_key, payload).in_sequence(seq as i64)
}

/// A payment's answer.
fn answer(
    event: Event,
    order: &OrderCreated,
    payment_id: Uuid,
    reason: Option<&str>,
) -> NewMessage {
    reply(
        event,
        order.order_id,
        AnswerSeq::First,
        messages::to_json(&PaymentResult {
            order_id: order.order_id,
            payment_id,
            amount_cents: order.amount_cents,
            reason: reason.map(str::to_string),
        }),
    )
}
