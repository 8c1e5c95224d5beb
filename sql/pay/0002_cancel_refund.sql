-- Undoing a cancelled order. A payment row moves at most once more: COMPLETED -> REFUNDED.
-- An order cancelled before pay charged it gets a CANCELLED row instead of a payment: the
-- tombstone. payments.order_id being unique, a later OrderCreated for that order finds it
-- and charges nothing.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'REFUNDED'));
COMMENT ON COLUMN payments.message_id IS
    'the message that wrote the row: OrderCreated, or OrderCancelled for a CANCELLED tombstone';

-- One refund per order, enforced by the database, behind the status guard
-- (UPDATE payments ... WHERE status = 'COMPLETED'): a refund delivered twice credits once.
CREATE TABLE refunds (
    order_id     uuid        PRIMARY KEY REFERENCES payments (order_id),
    payment_id   uuid        NOT NULL REFERENCES payments (id),
    user_id      text        NOT NULL,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    message_id   uuid        NOT NULL,                   -- the OrderCancelled message that caused it
    created_at   timestamptz NOT NULL DEFAULT now()
);
