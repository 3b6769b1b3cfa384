-- What a call cost (JSON, see pricing::CostBreakdown): its live session's, written once by the
-- replica that carried it when it ended, and its recording analyses' together, added to by the
-- attempt that owns the analysis. NULL when no prices file was configured. Keep the same
-- meaning as sqlite/0009_call_cost.sql.
ALTER TABLE calls ADD COLUMN cost_live JSONB;
ALTER TABLE calls ADD COLUMN cost_recording JSONB;
