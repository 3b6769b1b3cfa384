-- Call records (SQLite). Timestamps are UTC RFC 3339 text, which sorts chronologically; ids are
-- 16-byte UUID blobs. Keep the same columns and meaning as postgres/0001_calls.sql.
CREATE TABLE calls (
    id BLOB PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    provider TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'in_progress', 'ended')),
    outcome TEXT CHECK (outcome IN ('completed', 'callback_requested', 'voicemail', 'failed')),
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    duration_seconds REAL,
    media_token_hash TEXT NOT NULL,
    media_token_expires_at TEXT NOT NULL,
    -- recording analysis: its own state, the analysis (JSON) and the transcript (JSON)
    analysis_status TEXT CHECK (analysis_status IN ('pending', 'done', 'failed')),
    analysis_error TEXT,
    analysis TEXT,
    transcript TEXT,
    updated_at TEXT NOT NULL,
    CHECK ((status = 'ended') = (outcome IS NOT NULL))
);

-- Listing is per tenant, newest first, keyset-paginated on (created_at, id).
CREATE INDEX calls_tenant_created ON calls (tenant, created_at DESC, id DESC);
CREATE UNIQUE INDEX calls_media_token ON calls (media_token_hash);

-- The turns of a live conversation: who spoke, what was said, and per-stage latency (JSON).
CREATE TABLE call_turns (
    call_id BLOB NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('caller', 'agent')),
    text TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    latency TEXT,
    PRIMARY KEY (call_id, seq)
);
