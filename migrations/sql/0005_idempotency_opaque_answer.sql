-- The event store knows no HTTP: an idempotency record keeps the command's answer as
-- an opaque document (`body`), and the HTTP layer picks the status from the route
-- (201 for a creation, 200 otherwise), as it does the first time. The HTTP status
-- column is no longer written (expand step; a later migration drops it once no running
-- version reads it).
alter table es.idempotency alter column status drop not null;
comment on column es.idempotency.status is 'unused since 0005: the answer is opaque';
