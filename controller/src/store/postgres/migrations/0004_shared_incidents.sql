-- Controllers sharing the database correlate into one set of incidents
-- and deliver each output notice from one of them.
--
-- Every write of an incident first takes one transaction-level advisory
-- lock (released at commit), so incident writes commit one controller at a
-- time, and `changed`, drawn from a sequence as the row is written, grows
-- in commit order: a controller catches up with everything the others
-- wrote by asking for `changed` above the last it saw. `writer` names the
-- controller (its store) that wrote the row last.
CREATE SEQUENCE incident_changes;
ALTER TABLE incidents
    ADD COLUMN changed bigint NOT NULL DEFAULT 0,
    ADD COLUMN writer text NOT NULL DEFAULT '';
CREATE INDEX incidents_by_change ON incidents (changed);

CREATE FUNCTION ruse_incident_sequenced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed := nextval('incident_changes');
    RETURN NEW;
END
$$;
CREATE TRIGGER incidents_sequenced BEFORE INSERT OR UPDATE ON incidents
    FOR EACH ROW EXECUTE FUNCTION ruse_incident_sequenced();
-- "incidents <writer>": one notification per writing transaction.
CREATE TRIGGER incidents_changed AFTER INSERT OR UPDATE ON incidents
    FOR EACH ROW EXECUTE FUNCTION ruse_notify_change('writer');
-- "output_queue <queue>": the controller delivering that output wakes up.
CREATE TRIGGER output_queue_pushed AFTER INSERT ON output_queue
    FOR EACH ROW EXECUTE FUNCTION ruse_notify_change('queue');

-- Work that one controller at a time does (output delivery): held by the
-- controller that renews it before `expires`, taken over by another after.
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires timestamptz NOT NULL
);
