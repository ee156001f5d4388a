-- A river read by a service of its own whose topics follow the control plane
-- (rapids::river::Subscriptions::Registry) marks itself served: the event bus runs no
-- queue for it (a second reader would take its shards' leases and its events), and a
-- receive or ack on it is 409 `river_served`.
alter table rapids.rivers add column served boolean not null default false;
