-- GET /search (query-service): the words of a transfer's memo, found through a GIN
-- index of its `simple` text-search vector (no stemming, no stop words: memos are
-- names and references more than prose). `view-updater rebuild` copies it to the
-- rebuilt table like every index of the live views. Expand-only.
create index if not exists transfers_memo_search on views.transfers using gin (to_tsvector('simple', memo));
