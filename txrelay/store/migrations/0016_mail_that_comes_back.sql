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

-- The daemons (milter, tracker, webhook worker, inbound mail) write suppressions and the
-- outbox: their rights are a row of daemon_grants (migration 0034).

-- What became of a recipient after delivery: the kind of its bounce (txrelay/policy/
-- bounces.py), where the bounce was learnt, and a complaint about the message.
ALTER TABLE ledger ADD COLUMN bounce_kind text CHECK (bounce_kind IN ('hard', 'soft', 'block'));
ALTER TABLE ledger ADD COLUMN bounce_source text CHECK (bounce_source IN ('log', 'dsn'));
ALTER TABLE ledger ADD COLUMN complained_at timestamptz;
ALTER TABLE ledger ADD COLUMN complaint_type text;
