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

-- The inbound pipe runs as the daemons' role and writes inbound_mail: its right is a row of
-- daemon_grants (migration 0034).
