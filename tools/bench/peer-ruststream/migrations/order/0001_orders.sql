-- The peer's order database: the orders and the relay table RustStream's Relay guide puts
-- beside them (an inbox table in the lease form, written in the order's transaction).

CREATE TABLE orders (
    id           uuid        PRIMARY KEY,
    user_id      text        NOT NULL,
    item         text        NOT NULL,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    status       text        NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'PAID')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The bench polls the pending count while a scenario runs: a partial index keeps it cheap.
CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'PENDING';

-- One OrderCreated waiting for the relay. The relay subscription claims rows by lease
-- (locked_until) and deletes each once RabbitMQ confirmed its publish.
CREATE TABLE order_events (
    id           bigserial   PRIMARY KEY,
    locked_until timestamptz,
    payload      bytea       NOT NULL
);
