-- The line quality of a live call, written when its media session ends by the replica that
-- carried it (see media/quality.rs): the MOS estimate, jitter, lost frames and playback delay
-- as columns to query by, and every figure as served by GET /v1/calls/{id}/quality in
-- `figures`. Keep the same meaning in both engines' 0008.
CREATE TABLE call_quality (
    call_id BLOB NOT NULL PRIMARY KEY REFERENCES calls (id) ON DELETE CASCADE,
    measured_at TEXT NOT NULL,
    mos REAL,
    jitter_seconds REAL NOT NULL,
    frames_lost INTEGER NOT NULL,
    playback_delay_seconds REAL,
    figures TEXT NOT NULL
);
