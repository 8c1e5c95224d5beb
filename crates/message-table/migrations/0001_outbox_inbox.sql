-- The local message tables, created in every service's database by the message-table crate
-- (tracked in _message_table_migrations). Written and read only by that crate.

-- Messages this service sends. A row is written in the same transaction as the business
-- change it announces; the relay publishes it and marks it sent after the broker's ack.
CREATE TABLE outbox (
    id               uuid        PRIMARY KEY,             -- the message id (UUIDv7), AMQP message_id
    aggregate_id     text        NOT NULL,                -- what the message is about (an order id)
    event_type       text        NOT NULL,                -- e.g. OrderCreated; AMQP type property
    routing_key      text        NOT NULL,                -- e.g. order.created
    payload          jsonb       NOT NULL,
    headers          jsonb       NOT NULL DEFAULT '{}',   -- e.g. traceparent; sent as AMQP headers
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'sent', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,      -- publish attempts so far
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),  -- not claimed before this (backoff)
    claim_token      uuid,                                -- set while a relay holds the row
    lease_expires_at timestamptz,                         -- the holder is presumed dead after this
    last_error       text,
    expires_at       timestamptz NOT NULL,                -- unsent after this: dead
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    CHECK ((claim_token IS NULL) = (lease_expires_at IS NULL))
);
-- What the relay claims: due, unclaimed rows.
CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE status = 'pending' AND claim_token IS NULL;
-- What the resend scheduler looks at: leases that may have expired.
CREATE INDEX outbox_leased ON outbox (lease_expires_at) WHERE claim_token IS NOT NULL;
-- What the resend scheduler expires: unsent rows past their time to live.
CREATE INDEX outbox_expiry ON outbox (expires_at) WHERE status = 'pending' AND claim_token IS NULL;
CREATE INDEX outbox_dead ON outbox (created_at) WHERE status = 'dead';

-- Messages this service received. The primary key is the deduplication: a message id is
-- processed once, in the same transaction as its effect.
CREATE TABLE inbox (
    message_id      uuid        PRIMARY KEY,
    event_type      text        NOT NULL,
    payload         jsonb,                                -- NULL for poison (unparseable) messages
    raw_body        bytea,                                -- kept for poison messages (first 64 KiB)
    headers         jsonb       NOT NULL DEFAULT '{}',
    status          text        NOT NULL CHECK (status IN ('processed', 'failed', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,       -- handler runs so far
    next_attempt_at timestamptz,                          -- when the retry sweeper runs it again
    last_error      text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz
);
CREATE INDEX inbox_retry_due ON inbox (next_attempt_at) WHERE status = 'failed';
CREATE INDEX inbox_dead ON inbox (received_at) WHERE status = 'dead';
