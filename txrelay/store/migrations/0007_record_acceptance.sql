-- The end-of-message ledger write as one server-side function: one round trip per message
-- instead of six, and the account's quota block rows locked only for the last statements.
--
-- txrelay_record_acceptance records a message, one ledger row per recipient and the quota
-- it uses, exactly as txrelay.store.ledger did statement by statement:
--   * idempotent on txn_id: a known txn_id records nothing and returns no rows;
--   * the message's degraded-mode holds (quota_holds) end in the same transaction;
--   * recipients (in RCPT order) take units from the live blocks, oldest-expiring first
--     (expires_at NULLS LAST, id), the rest are overage; used never passes amount;
--   * connections.last_used_at is written only when it is older than a minute (it is shown
--     to the minute; reporting also reads the ledger), so it is not a second hot row.
-- The blocks are locked (FOR UPDATE) after everything that does not need them, so messages
-- of one account wait for each other only for the allocation, the ledger insert and COMMIT.
-- Returns one row per recipient: (message_row_id, recipient, billing, quota_block_id).
CREATE FUNCTION txrelay_record_acceptance(
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
    PERFORM 1 FROM quota_blocks b
      WHERE b.account_id = p_account_id AND b.expired_unused IS NULL
        AND (b.expires_at IS NULL OR b.expires_at > p_accepted_at)
      ORDER BY b.expires_at NULLS LAST, b.id
        FOR UPDATE;
    -- A new statement sees the rows as locked; block i serves recipients numbered
    -- (upto - unused, upto], upto the running total of unused units in consumption order.
    RETURN QUERY
    WITH live AS (
        SELECT b.id, b.amount - b.used AS unused,
               sum(b.amount - b.used) OVER (ORDER BY b.expires_at NULLS LAST, b.id) AS upto
          FROM quota_blocks b
         WHERE b.account_id = p_account_id AND b.expired_unused IS NULL
           AND (b.expires_at IS NULL OR b.expires_at > p_accepted_at)
    ), allocated AS (
        SELECT r.rcpt, r.n, l.id AS block_id
          FROM unnest(p_recipients) WITH ORDINALITY AS r (rcpt, n)
          LEFT JOIN live l ON r.n > l.upto - l.unused AND r.n <= l.upto
    ), inserted AS (
        INSERT INTO ledger (message_id, account_id, connection_id, recipient, billing,
                            quota_block_id, accepted_at)
        SELECT v_message, p_account_id, p_connection_id, a.rcpt,
               CASE WHEN a.block_id IS NULL THEN 'overage' ELSE 'quota' END, a.block_id,
               p_accepted_at
          FROM allocated a ORDER BY a.n
        RETURNING ledger.id, ledger.recipient, ledger.billing, ledger.quota_block_id
    ), consumed AS (
        UPDATE quota_blocks q SET used = q.used + c.units
          FROM (SELECT a.block_id, count(*)::integer AS units FROM allocated a
                 WHERE a.block_id IS NOT NULL GROUP BY a.block_id) c
         WHERE q.id = c.block_id
        RETURNING q.id
    )
    SELECT v_message, i.recipient, i.billing, i.quota_block_id
      FROM inserted i  -- consumed runs although unread: data-modifying WITH always runs
     ORDER BY i.id;
END
$$;
