-- Campaigns and the lure registry, shared: one controller (the holder of
-- the `deploy` lease) creates and retires lure instances and moves
-- rollouts on; the others take in what it wrote.

-- "campaigns <name>": applied, changed, paused, rotated, deleted.
CREATE TRIGGER campaigns_changed AFTER INSERT OR UPDATE OR DELETE ON campaigns
    FOR EACH ROW EXECUTE FUNCTION ruse_notify_change('name');

-- "lures *": once per transaction that wrote instances (a campaign pass
-- writes thousands in one statement).
CREATE FUNCTION ruse_notify_table() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ruse_changes', TG_TABLE_NAME || ' *');
    RETURN NULL;
END
$$;
CREATE TRIGGER lures_changed AFTER INSERT OR UPDATE ON lures
    FOR EACH STATEMENT EXECUTE FUNCTION ruse_notify_table();
