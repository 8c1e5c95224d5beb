//! The payment handler: what pay does with an `OrderCreated` message.
//!
//! It runs inside the inbox's transaction (see `message_table::inbox`), so the inbox row, the
//! debit, the payment row and the reply message commit together or not at all. A
//! duplicate `OrderCreated` never reaches this code; and even a second message about the
//! same order (another message id) cannot pay twice: `payments.order_id` is unique.
//!
//! Business failures are outcomes, not errors: an unknown user or insufficient funds is
//! recorded as a FAILED payment and answered with `PaymentFailed`. It is not retried.

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
    Event, ORDER_CREATED, OrderCreated, PAYMENT_COMPLETED, PAYMENT_FAILED, PaymentResult,
    PaymentStatus,
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

/// The order a message asks to pay; `Permanent` when it cannot be one.
fn read_order(msg: &InboxMessage) -> Result<OrderCreated, HandlerError> {
    if msg.event_type != ORDER_CREATED.name {
        return Err(HandlerError::Permanent(format!(
            "unexpected event type {:?}",
            msg.event_type
        )));
    }
    let order: OrderCreated = serde_json::from_value(msg.payload.clone())
        .map_err(|e| HandlerError::Permanent(format!("invalid OrderCreated payload: {e}")))?;
    if order.amount_cents <= 0 {
        return Err(HandlerError::Permanent(format!(
            "invalid amount {}",
            order.amount_cents
        )));
    }
    Ok(order)
}

#[async_trait]
impl MessageHandler for PaymentHandler {
    /// Pays every order of the batch (`pay_all`); a single message is a batch of one.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        let orders = msgs
            .iter()
            .map(|m| read_order(m))
            .collect::<Result<Vec<_>, _>>()?;
        self.pay_all(tx, msgs, &orders).await
    }

    /// The account the payment debits: a batch debits its accounts in one order.
    fn lock_key(&self, msg: &InboxMessage) -> Option<String> {
        msg.payload["user_id"].as_str().map(str::to_string)
    }
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
    /// Pays `orders` (one per message of `msgs`, in that order) and enqueues the replies,
    /// each in the trace of the message that asked: five statements, whatever the number of
    /// orders. Several orders of one account each see the balance the one before left: the
    /// balances are read under their locks and the orders decided here, in order, then each
    /// account is debited once by its total.
    async fn pay_all(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
        orders: &[OrderCreated],
    ) -> Result<(), HandlerError> {
        let users: Vec<&str> = orders.iter().map(|o| o.user_id.as_str()).collect();
        // The accounts locked first, in one order (the lock key's): concurrent batches do
        // not deadlock on them. Their balances, as no one else can change them now; a user
        // missing here is unknown.
        let mut balances: HashMap<String, i64> = sqlx::query_as(
            "SELECT user_id, balance_cents FROM accounts WHERE user_id = ANY($1)
             ORDER BY user_id FOR UPDATE",
        )
        .bind(&users)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        // The payment rows first: the unique order_id is the guard against paying twice.
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

        let mut failed: Vec<(Uuid, &str)> = Vec::new();
        let mut replies = Vec::with_capacity(orders.len());
        for (i, (msg, order)) in msgs.iter().zip(orders).enumerate() {
            let _in_span = msg.span.enter();
            let span = tracing::info_span!("payment", order_id = %order.order_id).entered();
            if !inserted.contains(&payment_ids[i]) {
                tracing::warn!(order_id = %order.order_id, message_id = %msg.message_id, "order already has a payment; message ignored");
                continue;
            }
            let payment_id = payment_ids[i];
            let reply = if paid[i] {
                tracing::info!(order_id = %order.order_id, %payment_id, amount_cents = order.amount_cents, "payment completed");
                reply(PAYMENT_COMPLETED, order, payment_id, None)
            } else {
                let reason = failure_reason(balances.contains_key(&order.user_id));
                tracing::info!(order_id = %order.order_id, %payment_id, reason, "payment failed");
                failed.push((order.order_id, reason));
                reply(PAYMENT_FAILED, order, payment_id, Some(reason))
            };
            drop(span);
            replies.push(traced(reply, msg));
        }
        if !failed.is_empty() {
            let (ids, reasons): (Vec<Uuid>, Vec<&str>) = failed.into_iter().unzip();
            sqlx::query(
                "UPDATE payments p SET status = $3, failure_reason = f.reason
                 FROM unnest($1::uuid[], $2::text[]) AS f(order_id, reason)
                 WHERE p.order_id = f.order_id",
            )
            .bind(&ids)
            .bind(&reasons)
            .bind(PaymentStatus::Failed)
            .execute(&mut *tx)
            .await?;
        }
        outbox::enqueue_all(tx, &replies, self.message_ttl).await?;
        Ok(())
    }
}

/// The reply, in the trace of the message that asked.
fn traced(reply: NewMessage, msg: &InboxMessage) -> NewMessage {
    let trace = common::trace::outgoing(common::trace::from_message(&msg.headers).as_ref());
    reply.with_header(common::trace::TRACEPARENT, trace.to_string())
}

fn reply(event: Event, order: &OrderCreated, payment_id: Uuid, reason: Option<&str>) -> NewMessage {
    NewMessage::new(
        order.order_id,
        event.name,
        event.routing_key,
        messages::to_json(&PaymentResult {
            order_id: order.order_id,
            payment_id,
            amount_cents: order.amount_cents,
            reason: reason.map(str::to_string),
        }),
    )
}
