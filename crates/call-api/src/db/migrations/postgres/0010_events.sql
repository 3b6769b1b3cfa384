-- Call events (the outbox): one row per thing that happened to a call, written in the same
-- transaction as the change it describes, so no event is lost or invented when a replica dies.
-- `id` grows with every row (the order to read a tenant's or a call's events in); `event_id` is
-- the identifier integrators see (`webhook-id`, for deduplication). `dispatched` is false until
-- the webhook worker has made a delivery row for each of the tenant's endpoints.
-- Keep the same meaning as sqlite/0010_events.sql.
CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    call_id UUID NOT NULL,
    type TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    payload JSONB NOT NULL,
    dispatched BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX events_tenant ON events (tenant, id);
CREATE INDEX events_call ON events (call_id, id);
CREATE INDEX events_undispatched ON events (id) WHERE NOT dispatched;

-- One row per (event, endpoint): its delivery state. A replica claims a pending row by setting
-- `claimed_by`/`claimed_until`; a claim that runs out (the replica died mid-delivery) is taken
-- again, so delivery is at least once.
CREATE TABLE webhook_deliveries (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_row BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    call_id UUID NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    claimed_by TEXT,
    claimed_until TIMESTAMPTZ,
    last_status INTEGER,
    last_error TEXT,
    delivered_at TIMESTAMPTZ,
    UNIQUE (event_row, endpoint)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint, call_id, event_row) WHERE state = 'pending';
