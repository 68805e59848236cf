-- The tracker checks pending domains' DKIM records (txrelay/tracker/tick.py): the daemons'
-- role may record a check and mark a domain published. The grant function of migration
-- 0016, replaced with these two grants added (db migrate calls it after migrating).
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
    -- Bounces and complaints suppress recipients and produce events for the webhooks
    -- (migration 0016).
    EXECUTE format('GRANT INSERT, UPDATE ON suppressions, webhook_outbox TO %I', p_role);
    -- Settling and renewals change a block's use and add renewed blocks (that insert bumps
    -- the policy version through its trigger, which runs as the daemon).
    EXECUTE format('GRANT INSERT, UPDATE ON quota_blocks TO %I', p_role);
    EXECUTE format('GRANT UPDATE ON policy_version TO %I', p_role);
    EXECUTE format('GRANT UPDATE (last_used_at) ON connections TO %I', p_role);
    -- The tracker's tick looks pending domains' DKIM records up (migration 0032): it
    -- records each check and marks a domain published, nothing else of the domain.
    EXECUTE format('GRANT INSERT, UPDATE ON dkim_publication_checks TO %I', p_role);
    EXECUTE format('GRANT UPDATE (dkim_published_at) ON sending_domains TO %I', p_role);
    -- Nothing else: accounts, keys, domains, connections' policy columns and credentials
    -- are the admin's (the CLI's role).
END $$;
