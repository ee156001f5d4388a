-- GET /search (query-service): the words of a transfer's memo, found through a GIN
-- index of its `simple` text-search vector (no stemming, no stop words: memos are
-- names and references more than prose), and a customer's or staff's pages of
-- transactions newest first, through an index in that order. `view-updater rebuild`
-- copies both to the rebuilt tables like every index of the live views. Expand-only.
create index if not exists transfers_memo_search on views.transfers using gin (to_tsvector('simple', memo));
create index if not exists account_transactions_newest
    on views.account_transactions (recorded_at desc, account_id desc, version desc);
