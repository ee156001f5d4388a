-- Every snapshot kept, not only the newest: a read of the past (`as_of`,
-- `at_version`) starts from the newest snapshot at or before its point and folds at
-- most the snapshot interval of events, however long the stream. The append writes
-- each snapshot here beside es.snapshots, in the same statement. `taken_at` is the
-- statement's now(), which is also the recorded_at of the events it appended.
create table es.snapshot_history (
    stream_id       uuid        not null,
    version         integer     not null check (version >= 1),
    stream_type     text        not null,
    schema_version  smallint    not null,
    state           jsonb       not null,
    taken_at        timestamptz not null default now(),
    primary key (stream_id, version)
);
-- the newest snapshot taken by a point in time
create index snapshot_history_taken_at on es.snapshot_history (stream_id, taken_at);

insert into es.snapshot_history (stream_id, version, stream_type, schema_version, state, taken_at)
select stream_id, version, stream_type, schema_version, state, taken_at from es.snapshots;
