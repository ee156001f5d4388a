-- The double-entry ledger (see bank_domain::ledger): the bank's own accounts have no
-- stream; their balances are the sums of the postings against them.

-- The views' balances of the bank's own accounts, one row per account and part: the
-- `views` river writes the part of the shard it holds (so no row is hot), a rebuild
-- writes the part `rebuild`. A bank account's balance is the sum of its rows.
create table views.bank_balances (
    account_id uuid not null,
    part       text not null,
    currency   text not null,
    balance    bigint not null,
    postings   bigint not null,
    primary key (account_id, part)
);

-- The reconciliation's own books, kept incrementally from the event store (ledger
-- crate): where it has read to, every account's balance, each currency's sum, what
-- each transfer holds in transit, and what it found wrong.
create schema if not exists ledger;

create table ledger.cursor (
    id         int primary key default 1 check (id = 1),
    xid        xid8 not null default '0',
    position   bigint not null default 0,
    events     bigint not null default 0,
    checked_at timestamptz
);
insert into ledger.cursor default values;

-- Customers' accounts: the balance their last event says (what the aggregate folds),
-- `version` their stream's. The bank's: the sum of the postings, `version` their count.
create table ledger.balances (
    account_id   uuid primary key,
    currency     text not null,
    bank         boolean not null,
    balance      bigint not null,
    version      bigint not null,
    -- false until the views were seen at this version with this balance
    view_checked boolean not null default false
);
create index balances_view_unchecked on ledger.balances (account_id) where not view_checked;

-- Per currency the sum of every balance, customers' and the bank's: 0 when the books balance.
create table ledger.totals (
    currency text primary key,
    total    bigint not null
);

-- Transfers not yet settled: what the accounts moved into in_transit for them, and
-- the transfer's state as its own stream says. Rows of settled transfers holding
-- nothing are removed.
create table ledger.in_transit (
    transfer_id     uuid primary key,
    currency        text not null,
    -- what the accounts moved into in_transit for it, net
    amount          bigint not null,
    -- the transfer's amount (0 until its creation was read)
    transfer_amount bigint not null,
    state           text not null
);

-- What a check found: an event whose balance change is not its posting, a view that
-- differs from the store, a settled transfer that still holds money in transit.
create table ledger.findings (
    id         bigserial primary key,
    kind       text not null,
    account_id uuid,
    transfer_id uuid,
    position   bigint,
    detail     text not null,
    found_at   timestamptz not null default now()
);
