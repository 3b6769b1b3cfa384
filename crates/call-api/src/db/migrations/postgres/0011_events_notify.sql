-- Wakes the event stream's tail on every replica as soon as new events commit (a NOTIFY is
-- delivered at commit, and one per transaction however many rows it inserted). The tail also
-- reads the outbox every 0.2 s, so a notice lost while its connection was down delays events
-- by at most that. Keep the same meaning as sqlite/0011_events_notify.sql.
CREATE FUNCTION voice_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('voice_call_events', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION voice_events_notify();
