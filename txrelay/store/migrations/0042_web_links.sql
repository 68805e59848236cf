-- Read-only dashboard links scoped to one account (`txrelay web link ACCOUNT`).
--
-- The token itself is shown once; only its SHA-256 is kept (a 256-bit random token needs no
-- slow hash). `txrelay web` only reads this table; the CLI (the admin's role) writes it, so
-- there is no daemon_grants row.
CREATE TABLE web_links (
    id          bigserial PRIMARY KEY,
    account_id  integer NOT NULL REFERENCES accounts (id),
    token_hash  text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX web_links_account ON web_links (account_id);
