-- The event store's identity. The tailer puts it in every envelope; a river meets
-- envelopes of another store (the stream outlived the database: a fresh database, or a
-- restore, which takes a new identity with `bankctl store-identity --renew`) and skips
-- the events its store does not hold at once instead of waiting for them to appear.
create table es.store (
    one        boolean     primary key default true check (one),
    id         uuid        not null default gen_random_uuid(),
    renewed_at timestamptz not null default now()
);
insert into es.store default values;
