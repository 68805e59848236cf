-- The quota rules, each defined once (issue 11): every query that needs "how much quota is
-- left", "is the account paid" or "which block would bill a pending row" calls these
-- functions instead of spelling the rule out.
--
--   txrelay_block_live(expires_at, expired_unused, at)   a block counts at `at`: not closed
--       by the expiry tick, not expired. txrelay_block_left(...): its unused units then (0
--       once it is not live).
--   txrelay_remaining_quota(account, now)   the unused units of the account's blocks
--       (txrelay_block_left) minus its pending ledger rows (they take those units first
--       when they are settled), never below 0: what does not fit is overage. The milter's Redis balance starts from it (reserve.lua then subtracts its
--       held reservations); the degraded-mode fallback subtracts its PostgreSQL holds.
--   txrelay_account_paid(account)   a block was ever booked or renewed from a plan: out of
--       quota, mail goes on as overage; demo accounts are refused instead.
--   txrelay_allocate_pending(account, rows, accepted)   the block each given pending row is
--       billed to (NULL: overage). Read-only; txrelay_settle_account writes its answer, and
--       reports project unsettled rows with it (txrelay_pending_allocation) without writing.

CREATE FUNCTION txrelay_block_live(p_expires_at timestamptz, p_expired_unused integer,
                                   p_at timestamptz)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_expired_unused IS NULL AND (p_expires_at IS NULL OR p_expires_at > p_at)
$$;

CREATE FUNCTION txrelay_block_left(p_amount integer, p_used integer, p_expires_at timestamptz,
                                   p_expired_unused integer, p_at timestamptz)
RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN txrelay_block_live(p_expires_at, p_expired_unused, p_at)
                THEN p_amount - p_used ELSE 0 END
$$;

CREATE FUNCTION txrelay_remaining_quota(p_account_id bigint, p_now timestamptz)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT GREATEST(
             (SELECT COALESCE(sum(txrelay_block_left(b.amount, b.used, b.expires_at,
                                                     b.expired_unused, p_now)), 0)
                FROM quota_blocks b
               WHERE b.account_id = p_account_id)
             - (SELECT count(*) FROM ledger l
                 WHERE l.account_id = p_account_id AND l.billing = 'pending'),
             0)::bigint
$$;

CREATE FUNCTION txrelay_account_paid(p_account_id bigint)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM quota_blocks b
                    WHERE b.account_id = p_account_id AND b.kind IN ('booked', 'plan'))
$$;

-- Rule (0007's, applied per row at its accepted_at): a block serves a row only if it was
-- live then (not closed by expiry, expires_at NULL or after accepted_at); the oldest-
-- expiring live block with units left serves first (expires_at NULLS LAST, id); used never
-- passes amount; a row no block can serve is overage. Rows are taken in the order given.
-- Returns one row per given row, in the given order.
CREATE FUNCTION txrelay_allocate_pending(p_account_id bigint, p_rows bigint[],
                                         p_accepted timestamptz[])
RETURNS TABLE (row_id bigint, block_id bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_blocks bigint[];
    v_expires timestamptz[];
    v_left integer[];
    v_served bigint[];
    v_count integer := coalesce(cardinality(p_rows), 0);
    v_first timestamptz := (SELECT min(a) FROM unnest(p_accepted) AS a);
    v_block_count integer;
BEGIN
    IF v_count = 0 THEN
        RETURN;
    END IF;
    -- The blocks live when the first row was accepted, each with its units left then.
    SELECT array_agg(q.id ORDER BY q.expires_at NULLS LAST, q.id),
           array_agg(q.expires_at ORDER BY q.expires_at NULLS LAST, q.id),
           array_agg(txrelay_block_left(q.amount, q.used, q.expires_at, q.expired_unused,
                                        v_first) ORDER BY q.expires_at NULLS LAST, q.id)
      INTO v_blocks, v_expires, v_left
      FROM quota_blocks q
     WHERE q.account_id = p_account_id
       AND txrelay_block_live(q.expires_at, q.expired_unused, v_first);
    v_block_count := coalesce(cardinality(v_blocks), 0);
    v_served := array_fill(NULL::bigint, ARRAY[v_count]);
    FOR i IN 1 .. v_count LOOP
        FOR j IN 1 .. v_block_count LOOP
            IF v_left[j] > 0 AND (v_expires[j] IS NULL OR v_expires[j] > p_accepted[i]) THEN
                v_served[i] := v_blocks[j];
                v_left[j] := v_left[j] - 1;
                EXIT;
            END IF;
        END LOOP;
    END LOOP;
    RETURN QUERY SELECT s.row_id, s.block_id
                   FROM unnest(p_rows, v_served) WITH ORDINALITY AS s (row_id, block_id, n)
                  ORDER BY s.n;
END
$$;

-- What settling the account now would do, without doing it (for reports: they never write).
CREATE FUNCTION txrelay_pending_allocation(p_account_id bigint)
RETURNS TABLE (row_id bigint, block_id bigint)
LANGUAGE sql STABLE AS $$
    SELECT a.row_id, a.block_id
      FROM (SELECT array_agg(l.id ORDER BY l.id) AS ids,
                   array_agg(l.accepted_at ORDER BY l.id) AS accepted
              FROM ledger l
             WHERE l.account_id = p_account_id AND l.billing = 'pending') p,
           txrelay_allocate_pending(p_account_id, p.ids, p.accepted) a
$$;

-- Same signature, locks and result as 0009; the allocation is txrelay_allocate_pending's.
-- The pending rows are locked first, then the blocks that may serve them; the allocation
-- then reads those locked blocks in a new statement, so it sees their current used.
CREATE OR REPLACE FUNCTION txrelay_settle_account(p_account_id bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_rows bigint[];
    v_accepted timestamptz[];
    v_served bigint[];
    v_count integer;
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
    PERFORM 1
       FROM (SELECT q.id FROM quota_blocks q
              WHERE q.account_id = p_account_id
                AND txrelay_block_live(q.expires_at, q.expired_unused,
                                       (SELECT min(a) FROM unnest(v_accepted) AS a))
              ORDER BY q.expires_at NULLS LAST, q.id
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
