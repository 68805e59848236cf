-- Degraded mode: quota and rate reservations held in PostgreSQL while Redis is unreachable.
--
-- In normal operation reservations live in Redis (reserve.lua). When Redis does not answer
-- within [redis] timeout_ms the milter reserves here instead, with the same meaning: one row
-- per "<txn>|<recipient>" held between RCPT and end of message. The end-of-message ledger
-- transaction deletes a message's rows; a killed milter's rows stop counting at expires_at
-- ([milter] reservation_ttl_seconds) and are purged by the next reservation of the account.
CREATE TABLE quota_holds (
    member        text PRIMARY KEY,          -- "<txn>|<recipient lower-cased>"
    account_id    bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    connection_id bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    node          text NOT NULL DEFAULT '',
    held_at       timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX quota_holds_account ON quota_holds (account_id, expires_at);
CREATE INDEX quota_holds_connection ON quota_holds (connection_id, expires_at);
