-- The event store: the single source of truth of the command side.
-- Owned by the eventstore crate; appended to by account-service and transfer-service.

create schema if not exists es;

-- Every event ever recorded. `position` is a global, store-assigned sequence: it orders
-- events for readers but is NOT commit order (concurrent transactions commit out of
-- sequence order); the tailer reads the WAL or an (xid, position) cursor for that.
create table es.events (
    position        bigint generated always as identity primary key,
    stream_id       uuid        not null,
    stream_type     text        not null,
    version         integer     not null check (version >= 1),
    event_id        uuid        not null unique,
    type            text        not null,
    schema_version  smallint    not null default 1,
    data            jsonb       not null,
    metadata        jsonb       not null default '{}'::jsonb,
    recorded_at     timestamptz not null default now(),
    -- one writer wins per (stream, version): the loser's unique violation is an
    -- optimistic concurrency conflict, reported as such, never as a 500
    constraint events_stream_version_key unique (stream_id, version)
);

-- Latest snapshot per stream. A snapshot whose schema_version is not the code's is
-- ignored on load (and overwritten by the next snapshot the code writes).
create table es.snapshots (
    stream_id       uuid        primary key,
    stream_type     text        not null,
    version         integer     not null check (version >= 1),
    schema_version  smallint    not null,
    state           jsonb       not null,
    taken_at        timestamptz not null default now()
);

-- Idempotency-Key records: per actor, the hash of the request and the response that
-- was given. Written in the same statement as the events the request appended, so a
-- replay can never see the response without the events or the events without it.
create table es.idempotency (
    actor           text        not null,
    key             text        not null,
    request_hash    text        not null,
    status          smallint    not null,
    body            jsonb       not null,
    stream_id       uuid        not null,
    created_at      timestamptz not null default now(),
    primary key (actor, key)
);

-- Wake the tailer on every append without polling. A statement-level trigger sends
-- one NOTIFY per appending statement; Postgres folds identical notifications of one
-- transaction and delivers them only at commit, so a rolled-back append wakes nobody.
create function es.notify_append() returns trigger
language plpgsql as $$
begin
    perform pg_notify('es_events', '');
    return null;
end
$$;

create trigger events_notify_append
    after insert on es.events
    for each statement execute function es.notify_append();
