-- Ruse controller store, version 1.
--
-- Records other than events and lure instances are JSON (the same
-- serde form the embedded store writes), so an operator can read them
-- with psql. Events and lure instances keep their compact binary forms
-- (controller/src/store/event_record.rs, lure_record.rs) beside the
-- columns the controller queries by.

CREATE TABLE agents (id text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE tokens (id text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE admins (name text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE campaigns (name text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE decoys (name text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE allow_rules (name text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE suppressions (name text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);

-- The audit log: seq orders it, `at` bounds listings by time.
CREATE TABLE audit (
    seq bigserial PRIMARY KEY,
    at bigint NOT NULL,
    record jsonb NOT NULL
);

-- Incidents: the head (everything but the timeline) and the timeline in
-- batches, each keyed by its earliest entry.
CREATE TABLE incidents (id text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE incident_timeline (
    incident text NOT NULL,
    at bigint NOT NULL,
    event_id text NOT NULL,
    entries jsonb NOT NULL,
    PRIMARY KEY (incident, at, event_id)
);

-- One durable delivery queue per output.
CREATE TABLE output_queue (
    queue text NOT NULL,
    seq bigserial NOT NULL,
    item bytea NOT NULL,
    PRIMARY KEY (queue, seq)
);

-- The lure registry: every instance ever created, retired ones too.
CREATE TABLE lures (id text PRIMARY KEY, record bytea NOT NULL);

-- The event log, in the controllers' receive order (cursor). Agents choose
-- event ids and times, so neither orders anything; the id only makes a
-- resent event a duplicate.
CREATE TABLE events (
    cursor bigint PRIMARY KEY,
    id text NOT NULL UNIQUE,
    agent text NOT NULL,
    lure text NOT NULL,
    kind text NOT NULL,
    received bigint NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX events_by_agent ON events (agent, cursor);
CREATE INDEX events_by_lure ON events (lure, cursor);
CREATE INDEX events_by_kind ON events (kind, cursor);
CREATE INDEX events_by_received ON events (received);

-- Event cursors are handed out in blocks from this row; resource
-- revisions come from the sequence. Both only grow.
CREATE TABLE cursor_blocks (name text PRIMARY KEY, last bigint NOT NULL);
INSERT INTO cursor_blocks VALUES ('events', 0);
CREATE SEQUENCE revisions;
