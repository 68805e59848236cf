-- The tracker's place in each node's mail log, the quota reminder's arming, and the keys
-- that make plan renewal idempotent.

-- Where each node's tracker stands in its log. Written in the same transaction as the ledger
-- updates the lines caused: a restart resumes exactly after the last applied line.
CREATE TABLE tracker_positions (
    node             text NOT NULL,
    log_path         text NOT NULL,
    device           bigint,
    inode            bigint,
    fingerprint      text,           -- sha256 prefix of the file's first line (inode reuse)
    byte_offset      bigint NOT NULL DEFAULT 0 CHECK (byte_offset >= 0),
    lines_read       bigint NOT NULL DEFAULT 0,
    unparsed_lines   bigint NOT NULL DEFAULT 0,
    unmatched_events bigint NOT NULL DEFAULT 0,
    nrcpt_mismatches bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, log_path)
);

-- What the tracker noticed and an admin should see (nrcpt mismatch, ambiguous line...).
CREATE TABLE tracker_anomalies (
    id        bigserial PRIMARY KEY,
    node      text NOT NULL,
    queue_id  text NOT NULL,
    kind      text NOT NULL,
    detail    text NOT NULL,
    seen_at   timestamptz NOT NULL
);
CREATE INDEX tracker_anomalies_seen ON tracker_anomalies (seen_at);

-- Postfix reuses queue ids once a queue file is gone: after "removed" the id belongs to
-- whatever Postfix queues next (its own bounce notifications included), never to this row.
ALTER TABLE messages ADD COLUMN removed_at timestamptz;
CREATE INDEX messages_node_queue_id ON messages (node, queue_id);

-- Rows the milter recorded that Postfix has not (yet) confirmed: the void scan reads these.
CREATE INDEX ledger_awaiting_queue ON ledger (message_id) WHERE state = 'accepted';
CREATE INDEX ledger_message ON ledger (message_id);

-- Low-quota reminder: one e-mail per crossing below the threshold; booking re-arms it.
-- A row of its own, not a column of accounts: accounts changes bump the milters' policy.
CREATE TABLE quota_reminders (
    account_id bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    armed      boolean NOT NULL DEFAULT true,
    changed_at timestamptz NOT NULL
);

-- A plan renewal is booked once per scheduled date, whichever node's tick gets there first.
CREATE UNIQUE INDEX quota_blocks_plan_renewal ON quota_blocks (account_id, booked_at)
    WHERE kind = 'plan';
CREATE INDEX quota_blocks_open_expiry ON quota_blocks (expires_at)
    WHERE expired_unused IS NULL AND expires_at IS NOT NULL;
