-- The scheduler's state per policy: the next slot to fire (NULL: to be computed from the anchor).
-- Claiming a slot is a compare-and-set on next_run_at, so every slot fires once however many
-- Haven processes share the catalog; a tick reads only due policies through this index.
ALTER TABLE policies ADD COLUMN next_run_at BIGINT;
CREATE INDEX policies_due ON policies (status, next_run_at);
