-- How each caller turn ended (answered, interrupted, no_speech, failed; NULL while it runs), the
-- stage that failed (stt, llm, tts), a client-safe reason, and whether an agent turn is the
-- fallback line said after a failure. Keep the same meaning in both engines' 0007.
ALTER TABLE call_turns ADD COLUMN outcome TEXT CHECK (outcome IN ('answered', 'interrupted', 'no_speech', 'failed'));
ALTER TABLE call_turns ADD COLUMN stage TEXT CHECK (stage IN ('stt', 'llm', 'tts'));
ALTER TABLE call_turns ADD COLUMN reason TEXT;
ALTER TABLE call_turns ADD COLUMN fallback BOOLEAN NOT NULL DEFAULT FALSE;
