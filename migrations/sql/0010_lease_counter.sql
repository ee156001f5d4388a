-- Lease takeover fenced like the Kinesis Client Library's: every take of a shard's
-- lease bumps its counter (a conditional update), and a reader moves the checkpoint
-- only while the counter is the one it started with. An instance whose lease expired
-- and was taken back (by another instance, or by itself after a pause) can no longer
-- checkpoint from its old reader.
alter table rapids.river_shards add column lease_counter bigint not null default 0;
