-- The mail that comes back: suppression lists, webhooks and their outbox.
--
-- Shared by the return path, inbound DSN/ARF, suppression and webhook code; each of those
-- may add columns in a later migration of its own.

-- One account's recipients that its mail no longer goes to. PostgreSQL is the source of
-- truth; the milter refuses a suppressed recipient at RCPT. A row whose expires_at has
-- passed no longer suppresses (it is kept until replaced, for the history).
CREATE TABLE suppressions (
    account_id       bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    address          text NOT NULL CHECK (address = lower(address) AND length(address) <= 320),
    reason           text NOT NULL
                     CHECK (reason IN ('hard_bounce', 'soft_bounces', 'complaint', 'manual')),
    source_ledger_id bigint REFERENCES ledger (id) ON DELETE SET NULL,
    dsn              text,  -- the enhanced status code (5.1.1) when a bounce caused it
    detail           text NOT NULL DEFAULT '',  -- the DSN's diagnostic, or the admin's note
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz,  -- NULL: until removed
    PRIMARY KEY (account_id, address)
);
CREATE INDEX suppressions_account_created ON suppressions (account_id, created_at);

-- A shop's HTTPS endpoint for events. secret is sealed with the node's key-encryption key
-- (txrelay/kek.py) when one is configured: it must be usable to sign, so it is not hashed.
CREATE TABLE webhooks (
    id            bigserial PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    url           text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    events        text[] NOT NULL CHECK (cardinality(events) > 0),
    secret        text NOT NULL,
    allow_private boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL,
    removed_at    timestamptz
);
CREATE INDEX webhooks_account ON webhooks (account_id) WHERE removed_at IS NULL;

-- The outbox: one row per event and webhook, written in the transaction that records the
-- event itself, delivered at least once by the webhook worker (never by the milter).
CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    webhook_id      bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        uuid NOT NULL,  -- the same for every webhook that gets this event
    event           text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    delivered_at    timestamptz,
    failed_at       timestamptz,  -- gave up (retries exhausted)
    last_status     integer,      -- the receiver's HTTP status of the last attempt
    last_error      text,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- The daemons (milter, tracker, webhook worker, inbound mail) write these too.
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
    -- Settling and renewals change a block's use and add renewed blocks (that insert bumps
    -- the policy version through its trigger, which runs as the daemon).
    EXECUTE format('GRANT INSERT, UPDATE ON quota_blocks TO %I', p_role);
    EXECUTE format('GRANT UPDATE ON policy_version TO %I', p_role);
    EXECUTE format('GRANT UPDATE (last_used_at) ON connections TO %I', p_role);
    -- Nothing else: accounts, keys, domains, connections' policy columns, credentials and
    -- webhooks are the admin's (the CLI's role).
END $$;

-- What became of a recipient after delivery: the kind of its bounce (txrelay/policy/
-- bounces.py), where the bounce was learnt, and a complaint about the message.
ALTER TABLE ledger ADD COLUMN bounce_kind text CHECK (bounce_kind IN ('hard', 'soft', 'block'));
ALTER TABLE ledger ADD COLUMN bounce_source text CHECK (bounce_source IN ('log', 'dsn'));
ALTER TABLE ledger ADD COLUMN complained_at timestamptz;
ALTER TABLE ledger ADD COLUMN complaint_type text;
