-- One ledger row per copy Postfix queues (issue 12). Postfix's duplicate filter keys on the
-- address and its DSN parameters (ORCPT, NOTIFY), so RCPT TO:<a@x> repeated with another
-- ORCPT queues another copy of the message to a@x; each copy is delivered and billed. The
-- milter records one row per copy, so one message may have several rows for one recipient.
-- Recording stays idempotent by messages.txn_id (txrelay_record_acceptance).
ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_message_id_recipient_key;
CREATE INDEX IF NOT EXISTS ledger_message_recipient ON ledger (message_id, recipient);
