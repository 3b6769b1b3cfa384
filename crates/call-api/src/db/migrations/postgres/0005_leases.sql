-- Many replicas: the replica process that carries a live call (`REPLICA_ID#<nonce>`) and the lease
-- it renews on it; a call whose lease expired is ended by any replica ("replica lost"). NULL for
-- calls that are not live. Keep the same columns and meaning as sqlite/0005_leases.sql.
ALTER TABLE calls ADD COLUMN lease_owner TEXT;
ALTER TABLE calls ADD COLUMN lease_expires_at TIMESTAMPTZ;
-- The reaper's two questions: live calls whose lease expired, queued calls whose token expired.
CREATE INDEX calls_live_lease ON calls (lease_expires_at) WHERE status = 'in_progress';
CREATE INDEX calls_queued_token ON calls (media_token_expires_at) WHERE status = 'queued';
-- Renewal: one statement per tick for all the live calls of one replica.
CREATE INDEX calls_lease_owner ON calls (lease_owner) WHERE status = 'in_progress';
