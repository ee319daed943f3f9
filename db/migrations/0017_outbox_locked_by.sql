-- Which gateway node runs an outbox item: when that node is gone (its heartbeat older than a
-- session lease, or it left), another node takes the item at once instead of waiting for the
-- item's own lock to expire.
ALTER TABLE outbox ADD COLUMN locked_by text;
