-- Webhook delivery: when an attempt was made, and which accounts were told their quota ran
-- out (so that quota.exhausted is sent once per time it runs out, not at every tick).

ALTER TABLE webhook_outbox ADD COLUMN last_attempt_at timestamptz;

-- Lists a webhook's deliveries newest first (`txrelay webhook deliveries`).
CREATE INDEX webhook_outbox_webhook_created ON webhook_outbox (webhook_id, created_at);

-- An account whose remaining quota reached 0 and whose quota.exhausted event is queued; the
-- row goes when quota is back above 0, so the next time it runs out is told again.
CREATE TABLE quota_exhaustion (
    account_id bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    since      timestamptz NOT NULL
);

-- 0016's grants, plus the tracker's tick writing quota_exhaustion.
CREATE OR REPLACE FUNCTION txrelay_grant_daemon_role(p_role text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO %I', p_role);
    -- The ledger and its companions: the milter records and settles, the tracker follows
    -- delivery, renews plans and sends reminders.
    EXECUTE format('GRANT INSERT, UPDATE, DELETE ON messages, ledger, quota_holds, '
                   'tracker_positions, tracker_anomalies, tracker_pending_events, '
                   'notifications, quota_reminders, quota_plans TO %I', p_role);
    -- Bounces and complaints suppress recipients and produce events for the webhooks.
    EXECUTE format('GRANT INSERT, UPDATE ON suppressions, webhook_outbox TO %I', p_role);
    -- The tick remembers which accounts were told their quota ran out (quota.exhausted).
    EXECUTE format('GRANT INSERT, DELETE ON quota_exhaustion TO %I', p_role);
    -- Settling and renewals change a block's use and add renewed blocks (that insert bumps
    -- the policy version through its trigger, which runs as the daemon).
    EXECUTE format('GRANT INSERT, UPDATE ON quota_blocks TO %I', p_role);
    EXECUTE format('GRANT UPDATE ON policy_version TO %I', p_role);
    EXECUTE format('GRANT UPDATE (last_used_at) ON connections TO %I', p_role);
    -- Nothing else: accounts, keys, domains, connections' policy columns, credentials and
    -- webhooks are the admin's (the CLI's role).
END $$;
