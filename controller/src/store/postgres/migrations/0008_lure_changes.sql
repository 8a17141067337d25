-- Controllers that do not hold the `deploy` lease take in only the lure
-- instances written since they last looked, not the whole registry per
-- change (100,000 instances and more). Every write of instances first
-- takes one transaction-level advisory lock ("ruse" and 3) until its
-- commit, so `changed`, drawn from a sequence as each row is written,
-- grows in commit order across controllers, and a reader asking for rows
-- past the last `changed` it saw misses none. Rows from before this
-- migration have none, and are read when a controller loads the registry
-- whole (at start).
CREATE SEQUENCE lure_changes;
ALTER TABLE lures ADD COLUMN changed bigint;
CREATE INDEX lures_by_changed ON lures (changed);
