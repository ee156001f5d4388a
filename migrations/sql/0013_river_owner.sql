-- A generic river belongs to the identity that created it (its first subscription):
-- receiving, acknowledging and changing its subscriptions are the owner's, and an
-- admin's. Built-in rivers and rivers made before this column have no owner: admins
-- only.
alter table rapids.rivers add column owner text;
