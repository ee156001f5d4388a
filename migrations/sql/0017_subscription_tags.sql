-- A subscription may select on an event's tags as well as its type: every selector
-- (`vip`: the tag is there; `segment=road-warrior`: it has that value) must be met.
-- A river may subscribe to one pattern several times with other selectors, so the tags
-- (sorted, without repeats) join the key. Expand-only: a release that knows nothing of
-- tags keeps working (its subscriptions have none; its unsubscribe removes a
-- pattern's every selection).
alter table rapids.river_subscriptions add column tags text[] not null default '{}';
alter table rapids.river_subscriptions drop constraint river_subscriptions_pkey;
alter table rapids.river_subscriptions add primary key (river, pattern, tags);
