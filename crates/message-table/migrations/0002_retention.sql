-- Retention of the local message tables. The retention runner
-- (crates/message-table/src/retention.rs) deletes sent outbox rows and processed inbox rows after
-- their retention, oldest first, in bounded batches: these indexes find them without a scan.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE status = 'sent';
CREATE INDEX inbox_processed ON inbox (processed_at) WHERE status = 'processed';
