-- The peer's pay database: the accounts (seeded by the bench with the same SQL as this
-- system's pay), one payment per order, and the relay table of pay's answers.

CREATE TABLE accounts (
    user_id       text   PRIMARY KEY,
    balance_cents bigint NOT NULL CHECK (balance_cents >= 0)
);

-- The primary key is the peer's idempotency: a second delivery of an order inserts nothing.
CREATE TABLE payments (
    order_id     uuid        PRIMARY KEY,
    user_id      text        NOT NULL,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One PaymentCompleted waiting for the relay (the same form as order's order_events).
CREATE TABLE payment_events (
    id           bigserial   PRIMARY KEY,
    locked_until timestamptz,
    payload      bytea       NOT NULL
);
