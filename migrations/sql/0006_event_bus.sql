-- The event bus and the control plane (event-bus service; see docs/ARCHITECTURE.md).

-- Topics advertised by their producers (bankctl advertise). The bank's own event
-- types need no row: `topics` lists them beside these.
create table rapids.topics (
    name          text        primary key,
    description   text        not null default '',
    advertised_by text        not null,
    advertised_at timestamptz not null default now()
);

-- Rivers the control plane knows. A managed river is a built-in one run by a service
-- (accounts, transfers, views): it writes its own topics here at start-up, and the
-- control plane refuses to change them. Any other river follows its subscriptions
-- while it runs; one with no service behind it is a generic river, a durable queue
-- served by the event bus, which delivers only events recorded after `created_at`.
create table rapids.rivers (
    name       text        primary key,
    managed    boolean     not null default false,
    created_at timestamptz not null default now()
);

-- A river's topic patterns: an exact type, or a prefix `entity.*`.
create table rapids.river_subscriptions (
    river      text        not null references rapids.rivers (name) on delete cascade,
    pattern    text        not null,
    created_by text        not null,
    created_at timestamptz not null default now(),
    primary key (river, pattern)
);

-- The messages of generic rivers, written in the river's own transaction with its
-- checkpoint (so each event once per river). A receive hides a message until
-- `visible_at`; an ack sets `acked_at`, and an acked message is never delivered again
-- (the row stays, so a duplicate record on the stream is recognised).
create table rapids.river_messages (
    id            bigint      generated always as identity primary key,
    river         text        not null,
    event_id      uuid        not null,
    message       jsonb       not null,
    visible_at    timestamptz not null default now(),
    receipt       uuid,
    receive_count integer     not null default 0,
    acked_at      timestamptz,
    unique (river, event_id)
);
create index river_messages_waiting on rapids.river_messages (river, id) where acked_at is null;

-- GET /events: by type, by source (a bus event's `source`, an aggregate event's
-- stream type), by stream (the existing (stream_id, version) index), each paged by
-- position.
create index events_type_position on es.events (type, position);
create index events_source_position on es.events ((coalesce(metadata ->> 'source', stream_type)), position);
