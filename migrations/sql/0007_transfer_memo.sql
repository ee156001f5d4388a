-- A transfer's memo in the views (transfer.created's schema version 2 carries it).
--
-- Expand only: every row so far is a transfer created before memos (its event is at
-- schema version 1, upcast to an empty memo), so '' is its true value, and a constant
-- default adds the column without rewriting the table. view-updater of this release
-- writes the column; one of the release before leaves the default.

alter table views.transfers add column memo text not null default '';
