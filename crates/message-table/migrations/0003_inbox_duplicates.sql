-- Copies of a message the inbox dropped as duplicates, per message: the dedup insert's
-- ON CONFLICT path counts them (no extra statement), so a learner sees which message came
-- twice, not only a process-wide counter.
ALTER TABLE inbox ADD COLUMN duplicates integer NOT NULL DEFAULT 0;
