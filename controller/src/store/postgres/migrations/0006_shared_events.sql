-- Events ingested by one controller are shown live by the others
-- (`watch events`). Every batch of events is inserted under the incident
-- lock of migration 4, held until its commit, so `seq`, drawn from a
-- sequence as each row is inserted, grows in commit order across
-- controllers; `writer` names the controller (its store) that inserted it.
-- Rows from before this migration have neither.
CREATE SEQUENCE event_commits;
ALTER TABLE events ADD COLUMN seq bigint, ADD COLUMN writer text;
ALTER TABLE events ALTER COLUMN seq SET DEFAULT nextval('event_commits');
CREATE INDEX events_by_seq ON events (seq);

-- "events <writer>": once per inserting statement and controller.
CREATE FUNCTION ruse_notify_event_writers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ruse_changes', 'events ' || w)
        FROM (SELECT DISTINCT writer AS w FROM added WHERE writer IS NOT NULL) AS writers;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_added AFTER INSERT ON events
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION ruse_notify_event_writers();
