-- The foundation: accounts, keys, domains, connections, credentials, quota, ledger.
-- Integrity lives here, not only in the CLI: foreign keys, uniqueness, no negative amounts.

CREATE TABLE accounts (
    id                  bigserial PRIMARY KEY,
    name                text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    admin_email         text NOT NULL CHECK (length(admin_email) BETWEEN 3 AND 320),
    low_quota_threshold integer NOT NULL DEFAULT 0 CHECK (low_quota_threshold >= 0),
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dkim_keys (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    selector        text NOT NULL CHECK (selector ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$'),
    algorithm       text NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    private_key_pem text NOT NULL,
    public_key_b64  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- A domain belongs to exactly one account, system-wide: no tenant can sign as another.
CREATE TABLE sending_domains (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    domain      text NOT NULL UNIQUE CHECK (domain = lower(domain) AND length(domain) <= 253),
    list_help   text NOT NULL CHECK (list_help ~ '^(https?://|mailto:)[^[:space:][:cntrl:]<>]+$'),
    dkim_key_id bigint NOT NULL REFERENCES dkim_keys (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, account_id)
);

-- Deleted connections keep their row (the ledger points at them); the name is free again.
CREATE TABLE connections (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    enabled      boolean NOT NULL DEFAULT true,
    rate_limit   integer CHECK (rate_limit IS NULL OR rate_limit >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    deleted_at   timestamptz,
    UNIQUE (id, account_id)
);
CREATE UNIQUE INDEX connections_live_name ON connections (account_id, name) WHERE deleted_at IS NULL;

-- The domain and the connection must belong to the same account.
CREATE TABLE connection_domains (
    connection_id bigint NOT NULL,
    domain_id     bigint NOT NULL,
    account_id    bigint NOT NULL,
    PRIMARY KEY (connection_id, domain_id),
    FOREIGN KEY (connection_id, account_id) REFERENCES connections (id, account_id) ON DELETE CASCADE,
    FOREIGN KEY (domain_id, account_id) REFERENCES sending_domains (id, account_id) ON DELETE CASCADE
);

CREATE TABLE credentials (
    connection_id bigint PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._-]{2,63}$'),
    password_hash text NOT NULL CHECK (password_hash LIKE '{%}%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    rotated_at    timestamptz
);

-- What Dovecot's SQL passdb reads: only live, enabled connections can log in.
CREATE VIEW sasl_passdb AS
    SELECT cr.username, cr.password_hash AS password
      FROM credentials cr
      JOIN connections co ON co.id = cr.connection_id
     WHERE co.enabled AND co.deleted_at IS NULL;

CREATE TABLE quota_blocks (
    id             bigserial PRIMARY KEY,
    account_id     bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('demo', 'booked', 'plan')),
    amount         integer NOT NULL CHECK (amount > 0),
    used           integer NOT NULL DEFAULT 0 CHECK (used >= 0 AND used <= amount),
    booked_at      timestamptz NOT NULL,
    expires_at     timestamptz,
    expired_unused integer CHECK (expired_unused IS NULL OR expired_unused >= 0),
    CHECK (kind = 'demo' OR expires_at IS NOT NULL)
);
CREATE INDEX quota_blocks_account ON quota_blocks (account_id, expires_at);

CREATE TABLE quota_plans (
    account_id      bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    block_amount    integer NOT NULL CHECK (block_amount > 0),
    next_renewal_at timestamptz NOT NULL
);

-- One row per accepted message; txn_id is the milter's idempotency key for the transaction.
CREATE TABLE messages (
    id              bigserial PRIMARY KEY,
    txn_id          uuid NOT NULL UNIQUE,
    queue_id        text NOT NULL,
    node            text NOT NULL DEFAULT '',
    message_id      text,
    account_id      bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    connection_id   bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    envelope_sender text NOT NULL,
    header_from     text NOT NULL,
    size            bigint NOT NULL CHECK (size >= 0),
    recipient_count integer NOT NULL CHECK (recipient_count >= 0),
    accepted_at     timestamptz NOT NULL,
    queued_at       timestamptz
);
CREATE INDEX messages_queue_id ON messages (queue_id);
CREATE INDEX messages_connection_time ON messages (connection_id, accepted_at);
CREATE INDEX messages_message_id ON messages (message_id);

-- The per-recipient ledger: what is billed and what became of each recipient.
CREATE TABLE ledger (
    id             bigserial PRIMARY KEY,
    message_id     bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    account_id     bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    connection_id  bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    recipient      text NOT NULL,
    billing        text NOT NULL CHECK (billing IN ('quota', 'overage', 'void')),
    quota_block_id bigint REFERENCES quota_blocks (id),
    state          text NOT NULL DEFAULT 'accepted'
                   CHECK (state IN ('accepted', 'queued', 'delivered', 'deferred', 'bounced', 'voided')),
    dsn            text,
    last_event     text,
    last_event_at  timestamptz,
    accepted_at    timestamptz NOT NULL,
    UNIQUE (message_id, recipient),
    CHECK ((billing = 'quota') = (quota_block_id IS NOT NULL))
);
CREATE INDEX ledger_account_time ON ledger (account_id, accepted_at);
CREATE INDEX ledger_connection_time ON ledger (connection_id, accepted_at);
CREATE INDEX ledger_recipient ON ledger (recipient);

CREATE TABLE notifications (
    id         bigserial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind       text NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now(),
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- The milters cache connection policy; any provisioning change bumps this counter, so every
-- relay node sees the change on its next cheap poll.
CREATE TABLE policy_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO policy_version VALUES (true, 1);

CREATE FUNCTION bump_policy_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE policy_version SET version = version + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER accounts_policy AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();
CREATE TRIGGER dkim_keys_policy AFTER INSERT OR UPDATE OR DELETE ON dkim_keys
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();
CREATE TRIGGER sending_domains_policy AFTER INSERT OR UPDATE OR DELETE ON sending_domains
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();
CREATE TRIGGER connection_domains_policy AFTER INSERT OR UPDATE OR DELETE ON connection_domains
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();
CREATE TRIGGER credentials_policy AFTER INSERT OR UPDATE OR DELETE ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();
CREATE TRIGGER quota_blocks_policy AFTER INSERT OR DELETE ON quota_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();
-- connections.last_used_at changes on every message: only policy columns bump the version.
CREATE TRIGGER connections_policy AFTER INSERT OR DELETE ON connections
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();
CREATE TRIGGER connections_policy_update AFTER UPDATE OF name, enabled, rate_limit, deleted_at ON connections
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();
