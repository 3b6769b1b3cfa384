-- Call records (PostgreSQL). Keep the same columns and meaning as sqlite/0001_calls.sql.
CREATE TABLE calls (
    id UUID PRIMARY KEY,
    tenant TEXT NOT NULL,
    provider TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'in_progress', 'ended')),
    outcome TEXT CHECK (outcome IN ('completed', 'callback_requested', 'voicemail', 'failed')),
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ,
    ended_at TIMESTAMPTZ,
    duration_seconds DOUBLE PRECISION,
    media_token_hash TEXT NOT NULL,
    media_token_expires_at TIMESTAMPTZ NOT NULL,
    -- recording analysis: its own state, the analysis and the transcript
    analysis_status TEXT CHECK (analysis_status IN ('pending', 'done', 'failed')),
    analysis_error TEXT,
    analysis JSONB,
    transcript JSONB,
    updated_at TIMESTAMPTZ NOT NULL,
    CHECK ((status = 'ended') = (outcome IS NOT NULL))
);

-- Listing is per tenant, newest first, keyset-paginated on (created_at, id).
CREATE INDEX calls_tenant_created ON calls (tenant, created_at DESC, id DESC);
CREATE UNIQUE INDEX calls_media_token ON calls (media_token_hash);

-- The turns of a live conversation: who spoke, what was said, and per-stage latency.
CREATE TABLE call_turns (
    call_id UUID NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('caller', 'agent')),
    text TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at TIMESTAMPTZ,
    latency JSONB,
    PRIMARY KEY (call_id, seq)
);
