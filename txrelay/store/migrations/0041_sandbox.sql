-- Sandbox connections (issue 14, item 2).
--
--   connections.sandbox    set by 'connection create --sandbox' / 'connection set --sandbox':
--                          the connection's mail takes the whole path (AUTH, sender checks,
--                          List-Help, CFBL, DKIM, rate) but is captured here instead of
--                          delivered; no quota is reserved nor billed. A change bumps the
--                          policy version like the connection's other policy columns.
--   sandbox_messages       one row per captured message: the bytes the receiver would have
--                          got (headers with the relay's own and the DKIM-Signature, body).
--                          Kept [sandbox] retention_days, purged by the tracker's tick.
ALTER TABLE connections ADD COLUMN sandbox boolean NOT NULL DEFAULT false;

CREATE TRIGGER connections_policy_sandbox AFTER UPDATE OF sandbox ON connections
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();

CREATE TABLE sandbox_messages (
    id              bigserial PRIMARY KEY,
    txn_id          uuid NOT NULL UNIQUE,
    queue_id        text NOT NULL DEFAULT '',
    node            text NOT NULL DEFAULT '',
    message_id      text,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    connection_id   bigint NOT NULL REFERENCES connections (id),
    envelope_sender text NOT NULL,
    header_from     text NOT NULL,
    recipients      text[] NOT NULL,
    size            integer NOT NULL,
    raw             bytea NOT NULL,
    captured_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_messages_message_id ON sandbox_messages (message_id);
CREATE INDEX sandbox_messages_connection_time ON sandbox_messages (connection_id, captured_at);
CREATE INDEX sandbox_messages_captured_at ON sandbox_messages (captured_at);

INSERT INTO daemon_grants (privileges, objects, why) VALUES
    ('INSERT, DELETE', 'sandbox_messages',
     'the milter captures sandbox mail; the tracker''s tick purges it after retention');
