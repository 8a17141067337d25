-- Controllers sharing the database learn of each other's committed
-- changes with LISTEN ruse_changes; each notification's payload is
-- "<table> <key>" and arrives when the transaction commits.

CREATE FUNCTION ruse_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := to_jsonb(OLD);
    ELSE
        changed := to_jsonb(NEW);
    END IF;
    PERFORM pg_notify('ruse_changes', TG_TABLE_NAME || ' ' || (changed ->> TG_ARGV[0]));
    RETURN NULL;
END
$$;

-- Agents: enrolled, revoked, deleted, relabelled. Not for what only the
-- controller holding the session writes often (last seen, address).
CREATE TRIGGER agents_added_or_removed AFTER INSERT OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION ruse_notify_change('id');
CREATE TRIGGER agents_changed AFTER UPDATE ON agents
    FOR EACH ROW
    WHEN ((OLD.record - 'last_seen' - 'last_peer') IS DISTINCT FROM (NEW.record - 'last_seen' - 'last_peer'))
    EXECUTE FUNCTION ruse_notify_change('id');
