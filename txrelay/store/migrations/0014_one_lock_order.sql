-- One lock order for every writer of the ledger (issue 12, item 8). Two writers that lock
-- the same rows in different orders can deadlock; a 15,000-mail soak hit it three times.
-- Every writer now takes its locks in this order, and only in this order:
--
--   1. the settling lock of each account (txrelay_settle_lock), accounts in id order;
--   2. ledger rows, in id order (SELECT ... ORDER BY id FOR UPDATE before a multi-row
--      UPDATE; a plain UPDATE ... WHERE x = ANY(...) locks in whatever order it scans);
--   3. quota blocks, in id order.
--
-- The writers (docs/failure-modes.md, "Concurrent writers of the ledger"):
--   txrelay_record_acceptance (milter, journal replay)  inserts only: new ledger rows are
--       nobody else's until it commits, so it waits for no ledger row or block;
--   txrelay_settle_account (milter settler, quota tick, CLI)  1 → its pending rows → its
--       blocks (here: blocks by id, no longer by expiry; the allocation still reads them in
--       consumption order);
--   the quota tick (store/lifecycle.py)  1 and 2 for every account it will settle, before
--       it locks any block, then blocks by id (renewal, expiry);
--   the tracker (store/tracking.py, tracker/engine.py)  a chunk of log lines locks the
--       ledger rows of every queue id in it, by id, before it applies the first line (a
--       message's rows are committed before Postfix logs its queue id; rows a journal
--       replay commits meanwhile are newer, with higher ids than every row it locked);
--   voiding (store/tracking.py)  ledger rows SKIP LOCKED (it never waits for one), then
--       blocks by id.
-- tests/store/test_lock_order.py and tests/e2e/test_ledger_soak.py hold them to it.

-- The per-account lock that serialises settlers, defined once: the settle function and the
-- quota tick (which takes it for several accounts before any ledger row) both call it.
-- Class 0x7479 ("tx" + 1): apart from the fallback's hold locks (0x7478).
CREATE FUNCTION txrelay_settle_lock(p_account_id bigint)
RETURNS void
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(29817, (p_account_id % 2147483648)::integer)
$$;

-- Same signature, rule and result as 0012; blocks are locked in id order (order 3 above).
CREATE OR REPLACE FUNCTION txrelay_settle_account(p_account_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_rows bigint[];
    v_accepted timestamptz[];
    v_served bigint[];
    v_count integer;
BEGIN
    PERFORM txrelay_settle_lock(p_account_id);
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
    PERFORM 1
       FROM (SELECT q.id FROM quota_blocks q
              WHERE q.account_id = p_account_id
                AND txrelay_block_live(q.expires_at, q.expired_unused,
                                       (SELECT min(a) FROM unnest(v_accepted) AS a))
              ORDER BY q.id
                FOR UPDATE) b;
    SELECT array_agg(a.block_id ORDER BY a.n)
      INTO v_served
      FROM txrelay_allocate_pending(p_account_id, v_rows, v_accepted)
           WITH ORDINALITY AS a (row_id, block_id, n);
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
