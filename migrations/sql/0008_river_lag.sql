-- What operators see of a river's shards: how far behind the stream's tip each
-- shard's reader was at its last read (Kinesis's MillisBehindLatest), reported by the
-- lease holder with each lease renewal.
alter table rapids.river_shards add column millis_behind bigint, add column lag_reported_at timestamptz;
