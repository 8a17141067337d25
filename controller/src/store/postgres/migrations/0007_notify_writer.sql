-- Each notification names the controller whose transaction made the
-- change ("<table> <key> <writer>"; every connection of a controller sets
-- ruse.writer), so a controller leaves out its own changes: it already
-- holds them, and reading back each of its agents' session writes cost
-- its ingest a round trip per agent on its writer connection.
CREATE OR REPLACE FUNCTION ruse_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb;
    writer text := coalesce(current_setting('ruse.writer', true), '');
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := to_jsonb(OLD);
    ELSE
        changed := to_jsonb(NEW);
    END IF;
    PERFORM pg_notify('ruse_changes',
        TG_TABLE_NAME || ' ' || (changed ->> TG_ARGV[0]) || ' ' || writer);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION ruse_notify_table() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ruse_changes',
        TG_TABLE_NAME || ' * ' || coalesce(current_setting('ruse.writer', true), ''));
    RETURN NULL;
END
$$;

-- Cheaper per write: incidents and events notify once per statement with
-- the writer's name (no transition table, no row conversion), and an
-- incident's `changed` is set by the statement that writes it (no row
-- trigger).
CREATE FUNCTION ruse_notify_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ruse_changes',
        TG_TABLE_NAME || ' ' || coalesce(current_setting('ruse.writer', true), ''));
    RETURN NULL;
END
$$;
DROP TRIGGER incidents_sequenced ON incidents;
DROP FUNCTION ruse_incident_sequenced();
DROP TRIGGER incidents_changed ON incidents;
CREATE TRIGGER incidents_changed AFTER INSERT OR UPDATE ON incidents
    FOR EACH STATEMENT EXECUTE FUNCTION ruse_notify_writer();
DROP TRIGGER events_added ON events;
DROP FUNCTION ruse_notify_event_writers();
CREATE TRIGGER events_added AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION ruse_notify_writer();
