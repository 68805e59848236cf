-- Mail that reached the bounce domain(s): one row per message Postfix piped to
-- `txrelay inbound deliver` — a DSN, a complaint report or anything else — with what
-- became of it. `txrelay inbound stats` counts them; dropped mail is never forwarded.
CREATE TABLE inbound_mail (
    id                 bigserial PRIMARY KEY,
    received_at        timestamptz NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('dsn', 'arf', 'other')),
    -- recorded: a bounce or complaint was recorded; duplicate: it was known already (e.g.
    -- from Postfix's log); delayed: a DSN that only says "still trying"; dropped: see reason.
    outcome            text NOT NULL
                       CHECK (outcome IN ('recorded', 'duplicate', 'delayed', 'dropped')),
    reason             text NOT NULL DEFAULT '',
    envelope_sender    text NOT NULL DEFAULT '',
    envelope_recipient text NOT NULL,
    size               bigint NOT NULL CHECK (size >= 0),
    txn_id             uuid,  -- the message the return path or feedback id named
    account_id         bigint REFERENCES accounts (id) ON DELETE SET NULL,
    recipients         integer NOT NULL DEFAULT 0,  -- ledger rows recorded
    detail             text NOT NULL DEFAULT ''
);
CREATE INDEX inbound_mail_received ON inbound_mail (received_at);

-- The inbound pipe runs as the daemons' role: it also writes inbound_mail.
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
    -- What came back to the bounce domain (txrelay inbound deliver).
    EXECUTE format('GRANT INSERT ON inbound_mail TO %I', p_role);
    -- Settling and renewals change a block's use and add renewed blocks (that insert bumps
    -- the policy version through its trigger, which runs as the daemon).
    EXECUTE format('GRANT INSERT, UPDATE ON quota_blocks TO %I', p_role);
    EXECUTE format('GRANT UPDATE ON policy_version TO %I', p_role);
    EXECUTE format('GRANT UPDATE (last_used_at) ON connections TO %I', p_role);
    -- Nothing else: accounts, keys, domains, connections' policy columns, credentials and
    -- webhooks are the admin's (the CLI's role).
END $$;
