-- Whether an account is closed, in one index probe: POST /transfers checks its source
-- account's owner, currency (its first event) and closing without folding the stream
-- (EventStore::load_first_and). Small: one entry per closed account.
create index events_account_closed on es.events (stream_id) where type = 'account.closed';
