-- Idempotency binds the body: SHA-256 (hex) of the recording a finished analysis was made from, so
-- that the same Idempotency-Key with another body is refused. Keep the same meaning as
-- postgres/0006_analysis_body.sql.
ALTER TABLE calls ADD COLUMN analysis_body_sha256 TEXT;
