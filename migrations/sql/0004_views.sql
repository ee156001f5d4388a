-- The read models (owned by view-updater, read by query-service).
--
-- Each row carries the version of its stream it reflects: an event is applied only
-- when it is the row's version + 1. `view-updater rebuild` builds these tables anew
-- in a schema of its own and swaps the schemas (see view_updater::rebuild), so the
-- table definitions live in view_updater::schema too and must stay equal to these.

create schema if not exists views;

create table views.accounts (
    id          uuid primary key,
    owner       text not null,
    currency    text not null,
    status      text not null,
    balance     bigint not null,
    version     int not null,
    opened_at   timestamptz not null,
    updated_at  timestamptz not null
);
create index accounts_owner on views.accounts (owner, opened_at);

-- One row per balance change of an account: deposit, withdrawal, transfer_debit,
-- transfer_credit, refund.
create table views.account_transactions (
    account_id    uuid not null,
    version       int not null,
    kind          text not null,
    amount        bigint not null,
    currency      text not null,
    balance_after bigint not null,
    transfer_id   uuid,
    counterparty  uuid,
    recorded_at   timestamptz not null,
    primary key (account_id, version)
);

create table views.transfers (
    id             uuid primary key,
    from_account   uuid not null,
    to_account     uuid not null,
    amount         bigint not null,
    currency       text not null,
    state          text not null,
    failure_reason text,
    initiated_by   text not null,
    version        int not null,
    created_at     timestamptz not null,
    updated_at     timestamptz not null
);
create index transfers_initiated_by on views.transfers (initiated_by, created_at);
