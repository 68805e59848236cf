-- Webhook delivery: when an attempt was made, and which accounts were told their quota ran
-- out (so that quota.exhausted is sent once per time it runs out, not at every tick).
--
-- No new table and no change to the daemons' grants (txrelay_grant_daemon_role): the worker
-- updates webhook_outbox and the tick writes quota_reminders, which they may already.

ALTER TABLE webhook_outbox ADD COLUMN last_attempt_at timestamptz;

-- Lists a webhook's deliveries newest first (`txrelay webhook deliveries`).
CREATE INDEX webhook_outbox_webhook_created ON webhook_outbox (webhook_id, created_at);

-- Set when the tick queued quota.exhausted for the account; NULL again once its remaining
-- quota is above 0, so the next time it runs out is told again. The row may exist for an
-- account without a low-quota threshold: the reminder ignores those.
ALTER TABLE quota_reminders ADD COLUMN exhausted_since timestamptz;
