CREATE TABLE accounts (
    user_id       text        PRIMARY KEY,
    balance_cents bigint      NOT NULL CHECK (balance_cents >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One payment per order, enforced by the database: the last line of defence against paying
-- twice, behind the inbox's deduplication by message id.
CREATE TABLE payments (
    id             uuid        PRIMARY KEY,
    order_id       uuid        NOT NULL UNIQUE,
    user_id        text        NOT NULL,
    amount_cents   bigint      NOT NULL CHECK (amount_cents > 0),
    status         text        NOT NULL CHECK (status IN ('COMPLETED', 'FAILED')),
    failure_reason text,                                  -- unknown_user | insufficient_funds
    message_id     uuid        NOT NULL,                  -- the OrderCreated message that caused it
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Demo accounts.
INSERT INTO accounts (user_id, balance_cents) VALUES
    ('alice', 100000000),
    ('bob',   100000000),
    ('carol', 0);
