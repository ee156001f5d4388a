-- The archive (crate archive, river `archive`): what its committed pages wrote to S3,
-- registered in the transaction that moves the river's checkpoint. A file in the
-- bucket that is not registered and starts at or before a shard's checkpoint was
-- written by an attempt that never committed, and is removed. Expand-only.

-- One row per committed page of a shard: its records' first and last sequence
-- numbers (zero-padded) and the days (UTC) its events were recorded on.
create table if not exists rapids.archive_pages (
    shard_id  text not null,
    first_seq text not null,
    last_seq  text not null,
    days      date[] not null,
    primary key (shard_id, first_seq)
);

-- The files of committed pages.
create table if not exists rapids.archive_files (
    key       text primary key,
    shard_id  text not null,
    day       date not null,
    first_seq text not null,
    last_seq  text not null,
    events    integer not null
);

-- Every event archived, once: an event the stream carries twice (a republish after a
-- tailer's failover) is not written again.
create table if not exists rapids.archived_events (
    event_id uuid primary key,
    key      text not null
);

-- query-service's check of who may read an account's statements: the account's owner
-- as it was opened, and nothing else of the event store (security definer).
create or replace function es.account_owner(account uuid) returns text
    language sql stable security definer set search_path = es, pg_temp
    as $$ select data->>'owner' from es.events where stream_id = account and version = 1 and stream_type = 'account' $$;
revoke execute on function es.account_owner(uuid) from public;
