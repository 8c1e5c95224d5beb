-- Cancelling an order: PENDING_PAYMENT -> CANCELLED, PAID -> CANCEL_REQUESTED, and pay's
-- refund moves either to REFUNDED (services/order/src/status.rs has the whole machine).
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'CANCEL_REQUESTED', 'CANCELLED', 'REFUNDED'));

-- One accepted cancellation per order, written with the status change and its OrderCancelled
-- message. The Idempotency-Key of POST /orders/{id}/cancel lives here, as POST /buy's lives
-- on the order: a retry with the same key finds this row and gets the same answer.
CREATE TABLE order_cancellations (
    order_id        uuid        PRIMARY KEY REFERENCES orders (id),
    message_id      uuid        NOT NULL,              -- the OrderCancelled message (outbox id)
    idempotency_key text        UNIQUE,                -- the client's Idempotency-Key, if any
    request_hash    text,                              -- fingerprint of the request sent with that key
    created_at      timestamptz NOT NULL DEFAULT now()
);
