-- The line quality of a live call, written when its media session ends by the replica that
-- carried it (see media/quality.rs): the MOS estimate, jitter, lost frames and playback delay
-- as columns to query by, and every figure as served by GET /v1/calls/{id}/quality in
-- `figures`. Keep the same meaning in both engines' 0008.
CREATE TABLE call_quality (
    call_id UUID NOT NULL PRIMARY KEY REFERENCES calls (id) ON DELETE CASCADE,
    measured_at TIMESTAMPTZ NOT NULL,
    mos DOUBLE PRECISION,
    jitter_seconds DOUBLE PRECISION NOT NULL,
    frames_lost BIGINT NOT NULL,
    playback_delay_seconds DOUBLE PRECISION,
    figures JSONB NOT NULL
);
