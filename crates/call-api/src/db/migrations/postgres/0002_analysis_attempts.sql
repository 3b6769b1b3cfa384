-- Recording analysis attempts: which attempt owns the analysis (a claim is a compare-and-swap on
-- it), the client's Idempotency-Key, and when the attempt started and finished. Keep the same
-- columns and meaning as sqlite/0002_analysis_attempts.sql.
ALTER TABLE calls ADD COLUMN analysis_attempt TEXT;
ALTER TABLE calls ADD COLUMN analysis_idempotency_key TEXT;
ALTER TABLE calls ADD COLUMN analysis_started_at TIMESTAMPTZ;
ALTER TABLE calls ADD COLUMN analysis_completed_at TIMESTAMPTZ;
