-- Nothing to do on SQLite: one replica runs, and its event stream's tail reads the outbox every
-- 0.2 s (postgres/0011_events_notify.sql wakes the tails of other replicas at once).
SELECT 1;
