-- Live calls: why a call ended when the service ended it (media connection lost, shutdown…).
ALTER TABLE calls ADD COLUMN end_reason TEXT;
-- Whether the caller talked over this (agent) turn.
ALTER TABLE call_turns ADD COLUMN interrupted BOOLEAN NOT NULL DEFAULT FALSE;
