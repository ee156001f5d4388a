-- HTTP Idempotency-Key records expire (IDEMPOTENCY_TTL_HOURS, default 24 h): a cleanup
-- job in account-service and transfer-service deletes them by `created_at`, oldest
-- first, in bounded batches. The saga's step records (actors `saga:%`) never expire:
-- they are what makes a redelivered or retried step append nothing, however late it
-- comes. The index is partial, so it holds the expiring records only and the cleanup
-- never reads the saga's.
--
-- Built in the migration's transaction (not `concurrently`): services starting at once
-- wait on sqlx's migration lock, and a concurrent build would wait on them in turn.
-- Appends wait for the build, which reads the table once (seconds for millions of rows).
create index if not exists idempotency_expiry on es.idempotency (created_at)
    where actor not like 'saga:%';

-- Transfers not settled yet, oldest first: what transfer-service's `transfers_unsettled`
-- gauge counts every few seconds and the event bus's `GET /ops/unsettled` lists. Partial,
-- so it stays as small as the number of transfers in flight. (view-updater's rebuild
-- copies the live tables' indexes.)
create index if not exists transfers_unsettled on views.transfers (created_at)
    where state not in ('completed', 'failed');
