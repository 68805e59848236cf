-- Deferred block allocation: the end-of-message write no longer touches any per-account row.
--
-- With 0007 every message of one account locked the account's quota blocks and waited for
-- the previous message's COMMIT (a WAL fsync) before it could allocate: one busy account
-- was capped by fsync latency, and its EOM tail grew with the number of its concurrent
-- senders. Now:
--   * txrelay_record_acceptance records the recipients as billing 'pending' (no block), and
--     never locks or updates quota_blocks;
--   * txrelay_settle_account allocates an account's pending rows to its blocks later, with
--     the rule 0007 applied at once, in ledger id order (the order they were recorded).
-- Readers of quota_blocks.used or of billing settle first or count the pending rows
-- (docs/tracking-and-billing.md, "Pending and settled billing").

ALTER TABLE ledger DROP CONSTRAINT ledger_billing_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_billing_check
    CHECK (billing IN ('pending', 'quota', 'overage', 'void'));
-- ledger_check ((billing = 'quota') = (quota_block_id IS NOT NULL)) already holds for
-- 'pending' rows, which have no block: it stays as it is.

-- What a settler, the PostgreSQL fallback and the balance load look for: small, because
-- the milters settle within a fraction of a second.
CREATE INDEX ledger_pending ON ledger (account_id, id) WHERE billing = 'pending';

-- Same signature, result columns and rules as 0007 (idempotent on txn_id, the holds end in
-- the same transaction, last_used_at at most once a minute), but every recipient is
-- recorded as 'pending' with no block, and quota_blocks is neither locked nor read.
CREATE OR REPLACE FUNCTION txrelay_record_acceptance(
    p_txn_id uuid, p_queue_id text, p_node text, p_message_id text, p_account_id bigint,
    p_connection_id bigint, p_envelope_sender text, p_header_from text, p_size bigint,
    p_recipients text[], p_accepted_at timestamptz, p_release_holds text[])
RETURNS TABLE (message_row_id bigint, recipient text, billing text, quota_block_id bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_message bigint;
BEGIN
    IF cardinality(p_release_holds) > 0 THEN
        DELETE FROM quota_holds WHERE member = ANY (p_release_holds);
    END IF;
    INSERT INTO messages (txn_id, queue_id, node, message_id, account_id, connection_id,
                          envelope_sender, header_from, size, recipient_count, accepted_at)
    VALUES (p_txn_id, p_queue_id, p_node, p_message_id, p_account_id, p_connection_id,
            p_envelope_sender, p_header_from, p_size, cardinality(p_recipients),
            p_accepted_at)
    ON CONFLICT (txn_id) DO NOTHING
    RETURNING id INTO v_message;
    IF v_message IS NULL THEN
        RETURN;  -- recorded before: nothing else happens
    END IF;
    UPDATE connections SET last_used_at = p_accepted_at
     WHERE id = p_connection_id
       AND (last_used_at IS NULL OR last_used_at < p_accepted_at - interval '1 minute');
    RETURN QUERY
    WITH inserted AS (
        INSERT INTO ledger (message_id, account_id, connection_id, recipient, billing,
                            quota_block_id, accepted_at)
        SELECT v_message, p_account_id, p_connection_id, r.rcpt, 'pending', NULL,
               p_accepted_at
          FROM unnest(p_recipients) WITH ORDINALITY AS r (rcpt, n)
         ORDER BY r.n
        RETURNING ledger.id, ledger.recipient, ledger.billing, ledger.quota_block_id
    )
    SELECT v_message, i.recipient, i.billing, i.quota_block_id FROM inserted i ORDER BY i.id;
END
$$;

-- Allocates the account's pending rows; returns how many it settled (0: nothing pending).
--
-- Rule (0007's, applied per row at its accepted_at): a block serves a row only if it was
-- live then (not closed by expiry, expires_at NULL or after accepted_at); the oldest-
-- expiring live block with units left serves first (expires_at NULLS LAST, id); used never
-- passes amount; a row no block can serve is overage. Rows are taken in ledger id order.
--
-- Safe with several settlers (milters on several nodes, the tick) at once:
--   1. an advisory lock per account serialises settlers, also for accounts without blocks;
--   2. the pending rows are locked (FOR UPDATE) before the blocks: the tracker's voiding
--      locks ledger rows before it gives units back to a block, so both take the same
--      order, and a row voided meanwhile is re-checked and left out;
--   3. the blocks that may serve a row are locked (FOR UPDATE) and read after the locks,
--      so used is current: a settler that went first has moved it and settled its rows.
-- Idempotent: a settled row is no longer 'pending'.
CREATE FUNCTION txrelay_settle_account(p_account_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_rows bigint[];
    v_accepted timestamptz[];
    v_blocks bigint[];
    v_expires timestamptz[];
    v_left integer[];
    v_served bigint[];
    v_count integer;
    v_block_count integer;
BEGIN
    -- Class 0x7479 ("tx" + 1): apart from the fallback's hold locks (0x7478).
    PERFORM pg_advisory_xact_lock(29817, (p_account_id % 2147483648)::integer);
    SELECT array_agg(p.id ORDER BY p.id), array_agg(p.accepted_at ORDER BY p.id)
      INTO v_rows, v_accepted
      FROM (SELECT l.id, l.accepted_at FROM ledger l
             WHERE l.account_id = p_account_id AND l.billing = 'pending'
             ORDER BY l.id
               FOR UPDATE) p;
    v_count := coalesce(cardinality(v_rows), 0);
    IF v_count = 0 THEN
        RETURN 0;
    END IF;
    SELECT array_agg(b.id ORDER BY b.expires_at NULLS LAST, b.id),
           array_agg(b.expires_at ORDER BY b.expires_at NULLS LAST, b.id),
           array_agg(b.amount - b.used ORDER BY b.expires_at NULLS LAST, b.id)
      INTO v_blocks, v_expires, v_left
      FROM (SELECT q.id, q.expires_at, q.amount, q.used FROM quota_blocks q
             WHERE q.account_id = p_account_id AND q.expired_unused IS NULL
               AND (q.expires_at IS NULL
                    OR q.expires_at > (SELECT min(a) FROM unnest(v_accepted) AS a))
             ORDER BY q.expires_at NULLS LAST, q.id
               FOR UPDATE) b;
    v_block_count := coalesce(cardinality(v_blocks), 0);
    v_served := array_fill(NULL::bigint, ARRAY[v_count]);
    FOR i IN 1 .. v_count LOOP
        FOR j IN 1 .. v_block_count LOOP
            IF v_left[j] > 0 AND (v_expires[j] IS NULL OR v_expires[j] > v_accepted[i]) THEN
                v_served[i] := v_blocks[j];
                v_left[j] := v_left[j] - 1;
                EXIT;
            END IF;
        END LOOP;
    END LOOP;
    UPDATE ledger l
       SET billing = CASE WHEN s.block_id IS NULL THEN 'overage' ELSE 'quota' END,
           quota_block_id = s.block_id
      FROM unnest(v_rows, v_served) AS s (row_id, block_id)
     WHERE l.id = s.row_id;
    UPDATE quota_blocks q SET used = q.used + c.units
      FROM (SELECT s.block_id, count(*)::integer AS units
              FROM unnest(v_served) AS s (block_id)
             WHERE s.block_id IS NOT NULL GROUP BY s.block_id) c
     WHERE q.id = c.block_id;
    RETURN v_count;
END
$$;
