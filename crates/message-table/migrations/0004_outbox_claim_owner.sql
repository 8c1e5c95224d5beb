-- Which relay process holds a claimed row. Each relay process holds a session advisory lock
-- (keys 1819112556 and its owner id) on a connection of its own for its whole life;
-- when the process dies, PostgreSQL ends the session and frees the lock at once, and the
-- resend scheduler of any surviving instance hands that owner's rows back without waiting
-- for their lease (crates/message-table/src/outbox/owner.rs). NULL: claimed without an
-- owner (its lease alone guards it). Meaningful only while claim_token is set.
ALTER TABLE outbox ADD COLUMN claim_owner integer;
-- Owner ids, never reused: a new process never inherits a dead one's rows.
CREATE SEQUENCE outbox_relay_owner AS integer;
