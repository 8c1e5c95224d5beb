CREATE TABLE orders (
    id               uuid        PRIMARY KEY,
    user_id          text        NOT NULL,
    item             text        NOT NULL,
    amount_cents     bigint      NOT NULL CHECK (amount_cents > 0),
    status           text        NOT NULL DEFAULT 'PENDING_PAYMENT'
                                 CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED')),
    failure_reason   text,                                 -- why payment failed, from pay
    message_id       uuid        NOT NULL,                 -- the OrderCreated message (outbox id)
    idempotency_key  text        UNIQUE,                   -- the client's Idempotency-Key, if any
    request_hash     text,                                 -- fingerprint of the body sent with that key
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_user ON orders (user_id, created_at);
