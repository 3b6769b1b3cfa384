-- The carrier's own id of a call (Twilio's CallSid), so that carrier webhooks find their call and
-- a retried webhook does not create a second one. NULL for calls no carrier has reported.
-- Keep the same columns and meaning as postgres/0003_carrier_call_id.sql.
ALTER TABLE calls ADD COLUMN carrier_call_id TEXT;
CREATE UNIQUE INDEX calls_carrier_call_id ON calls (provider, carrier_call_id);
