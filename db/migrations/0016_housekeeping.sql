-- Housekeeping deletes finished bookkeeping rows by age; these indexes keep it from scanning
-- whole tables every hour.
CREATE INDEX outbox_done_idx ON outbox (done_at) WHERE state = 'done';
CREATE INDEX cloud_webhook_events_processed_idx ON cloud_webhook_events (received_at)
    WHERE state <> 'pending';
CREATE INDEX jira_webhook_deliveries_received_idx ON jira_webhook_deliveries (received_at);
