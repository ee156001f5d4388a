-- Rivers: durable subscriptions to the rapids (see eventstore::river).

-- One row per river and Kinesis shard: who reads it (a lease that expires unless
-- renewed) and how far it was handled. Lease times use the database clock only.
create table rapids.river_shards (
    river                    text not null,
    shard_id                 text not null,
    parent_shard_id          text,
    adjacent_parent_shard_id text,
    owner                    text,
    lease_expires_at         timestamptz,
    -- the sequence number of the last record handled; null: none yet
    checkpoint               text,
    -- set once a closed shard was read to its end (its children may start)
    finished_at              timestamptz,
    primary key (river, shard_id)
);

-- Records a handler kept failing on: parked so that the shard moves on. An operator
-- sets status 'retry' (bankctl retry-dead-letters); a river instance then hands the
-- record to the handler again and marks it 'resolved', or parks it again.
create table rapids.river_dead_letters (
    id              bigint generated always as identity primary key,
    river           text not null,
    shard_id        text not null,
    sequence_number text not null,
    stream_id       uuid,
    event_type      text,
    version         int,
    record          bytea not null,
    error           text not null,
    attempts        int not null,
    status          text not null default 'parked' check (status in ('parked', 'retry', 'resolved')),
    parked_at       timestamptz not null default now(),
    resolved_at     timestamptz,
    unique (river, shard_id, sequence_number)
);
create index river_dead_letters_open on rapids.river_dead_letters (river, status) where status <> 'resolved';
