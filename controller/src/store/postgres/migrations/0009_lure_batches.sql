-- Every controller creates the lure instances of the agents whose sessions
-- it holds, and writes them before it pushes them. As a row each, a
-- fleet-wide campaign's 100,000 instances took the database ~1.9 s to
-- insert (one 5,000-instance chunk at a time, under the lure lock) while
-- three controllers pushed; as one row per chunk, as the embedded store
-- keeps them, ~20 ms. An instance's later record (its retirement, or a
-- pass writing it again after a write whose outcome it did not know) is a
-- row of its own in `lures` with a later `changed`, which supersedes the
-- copy in its batch; a batch whose every instance has one is deleted.
-- `changed` (migration 8) orders batches and records together.
CREATE TABLE lure_batches (
    batch text PRIMARY KEY,
    records bytea NOT NULL,
    changed bigint NOT NULL,
    -- The instances' ids, so the database finds superseded batches itself.
    ids text[] NOT NULL
);
-- Random material compresses little: not worth the attempt per write.
ALTER TABLE lure_batches ALTER COLUMN records SET STORAGE EXTERNAL;
CREATE INDEX lure_batches_by_changed ON lure_batches (changed);

-- "lures * <writer>" as for instances written a row each.
CREATE FUNCTION ruse_notify_lures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ruse_changes',
        'lures * ' || coalesce(current_setting('ruse.writer', true), ''));
    RETURN NULL;
END
$$;
CREATE TRIGGER lure_batches_changed AFTER INSERT ON lure_batches
    FOR EACH STATEMENT EXECUTE FUNCTION ruse_notify_lures();
