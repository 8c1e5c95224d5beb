-- Per-aggregate order. A message may carry its position among the messages about its
-- aggregate (aggregate_seq, 1, 2, ...; NULL: unordered, as every row written before).
-- The relay claims a sequenced row only when no earlier row of its aggregate is unsent,
-- and the inbox applies a sequenced message only right after its predecessor
-- (crates/message-table/src/outbox/relay.rs, crates/message-table/src/inbox/order.rs).
ALTER TABLE outbox ADD COLUMN aggregate_seq bigint;
-- The claim's "no earlier unsent row of this aggregate" test: unsent rows are few (the sent
-- ones, kept for a week, are not in it).
CREATE INDEX outbox_unsent_seq ON outbox (aggregate_id, aggregate_seq) WHERE status <> 'sent';

-- What the inbox knows of a received message's order, and where each aggregate stands.
ALTER TABLE inbox ADD COLUMN aggregate_id text, ADD COLUMN aggregate_seq bigint;
-- parked: arrived before its predecessor was applied; applied when that one is.
ALTER TABLE inbox DROP CONSTRAINT inbox_status_check;
ALTER TABLE inbox ADD CONSTRAINT inbox_status_check
    CHECK (status IN ('processed', 'failed', 'dead', 'parked'));
CREATE INDEX inbox_parked ON inbox (aggregate_id, aggregate_seq) WHERE status = 'parked';
-- The last sequence applied per aggregate. Its row lock serialises the transactions that
-- apply messages of one aggregate; retention does not touch it (a forgotten position would
-- let an old copy be applied again).
CREATE TABLE inbox_sequences (
    aggregate_id text   PRIMARY KEY,
    applied_seq  bigint NOT NULL
);
