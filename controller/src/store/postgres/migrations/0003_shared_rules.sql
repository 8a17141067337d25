-- Decoys, allow rules and suppressions changed through any controller
-- are taken in by every controller sharing the database.
CREATE TRIGGER decoys_changed AFTER INSERT OR UPDATE OR DELETE ON decoys
    FOR EACH ROW EXECUTE FUNCTION ruse_notify_change('name');
CREATE TRIGGER allow_rules_changed AFTER INSERT OR UPDATE OR DELETE ON allow_rules
    FOR EACH ROW EXECUTE FUNCTION ruse_notify_change('name');
CREATE TRIGGER suppressions_changed AFTER INSERT OR UPDATE OR DELETE ON suppressions
    FOR EACH ROW EXECUTE FUNCTION ruse_notify_change('name');
