-- The order in which readers replay transitions (GET /events): by the transaction that
-- raised each notification, then its id. Ids alone are taken at insert, not at commit, so
-- a reader that went by id could pass an id whose transaction commits later and miss it.
-- A reader takes only rows whose transaction is older than every transaction still
-- running (pg_snapshot_xmin), so nothing can later appear before its position.
-- Rows written before this migration read as transaction 0: first, in id order.
ALTER TABLE notifications ADD COLUMN raised_in xid8 NOT NULL DEFAULT '0';
ALTER TABLE notifications ALTER COLUMN raised_in SET DEFAULT pg_current_xact_id();
CREATE INDEX notifications_event_order_idx ON notifications (raised_in, id);
