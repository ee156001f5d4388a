-- The rapids: what the tailer needs to follow the event store.

-- The transaction that wrote each event. The `poll` source reads events by an
-- (xid, position) cursor below the oldest running transaction, which a plain
-- position cursor cannot do safely (positions are handed out before commit, so
-- transactions commit out of position order). Written by the default, never by hand.
alter table es.events add column xid xid8 not null default pg_current_xact_id();
create index events_xid_position on es.events (xid, position);

create schema if not exists rapids;

-- Where each tailer source has published up to. Advanced only after Kinesis
-- acknowledged every event before it.
create table rapids.tailer_position (
    source      text primary key,
    xid         xid8,
    position    bigint not null default 0,
    -- for a backfill: read only transactions below this one (the rest is decoded)
    until_xid   xid8,
    updated_at  timestamptz not null default now()
);

-- Written by an idle `wal` tailer: its commit lets the slot advance (and release WAL)
-- while no event is appended. Only inserts are published; older rows are deleted.
create table rapids.heartbeat (
    id  bigint generated always as identity primary key,
    at  timestamptz not null default now()
);

-- The `wal` source decodes this publication through a logical replication slot.
create publication rapids_events for table es.events, rapids.heartbeat with (publish = 'insert');
