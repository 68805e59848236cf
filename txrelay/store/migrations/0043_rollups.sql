-- A year of mail (issue 15 item 4): interactive reports that do not read the whole ledger.
--
-- * ledger_recipient_lower: `messages search --to` matches the recipient case-insensitively;
--   the plain index on recipient could not serve lower(recipient) = lower(...).
-- * ledger_rollups: per connection and 15-minute bucket of accepted_at (UTC grid, which
--   holds every local edge `stats --by` makes), the same cohort `stats` counts (recipients
--   that arrived, voided ones excluded, and what became of them) plus the billing figures
--   (rows by billing, voided ones included). The ledger's own statement triggers write each
--   statement's change as a delta row in ledger_rollup_deltas, in the transaction that
--   changes the ledger, so a rollback takes the delta back with it. Deltas are only ever
--   inserted: the milters and trackers of several nodes never wait for each other on a
--   shared counter row, nor deadlock on two of them. txrelay_fold_rollups() moves the
--   deltas into ledger_rollups in one statement (the tracker's tick calls it); a reader
--   adds ledger_rollups and the deltas not yet folded in one query, so its figures are
--   exact whenever it reads.
-- * txrelay_overage_used reads the rollups (same meaning as 0033's: settled 'overage' rows
--   plus pending rows settling would make overage, accepted in [from, until)).
-- * Retention (`txrelay db prune`) deletes old ledger rows with the session setting
--   txrelay.pruning = 'on': the rollups keep the history they summed. Nothing else
--   deletes ledger rows; a DELETE without that setting is refused, so that no figure
--   silently loses its rows.

CREATE INDEX ledger_recipient_lower ON ledger (lower(recipient));

CREATE FUNCTION txrelay_rollup_bucket(t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT date_bin('15 minutes', t, timestamptz '2000-01-01 00:00:00+00')
$$;

CREATE TABLE ledger_rollups (
    account_id     bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    connection_id  bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    bucket         timestamptz NOT NULL CHECK (bucket = txrelay_rollup_bucket(bucket)),
    -- the stats cohort: rows not voided, by state
    arrived        bigint NOT NULL DEFAULT 0,
    delivered      bigint NOT NULL DEFAULT 0,
    deferred       bigint NOT NULL DEFAULT 0,
    bounced        bigint NOT NULL DEFAULT 0,
    complained     bigint NOT NULL DEFAULT 0,
    in_flight      bigint NOT NULL DEFAULT 0,
    -- billing: every row, by billing
    billed_quota   bigint NOT NULL DEFAULT 0,
    billed_overage bigint NOT NULL DEFAULT 0,
    billed_void    bigint NOT NULL DEFAULT 0,
    billed_pending bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, connection_id, bucket)
);
CREATE INDEX ledger_rollups_connection ON ledger_rollups (connection_id, bucket);

CREATE TABLE ledger_rollup_deltas (LIKE ledger_rollups INCLUDING DEFAULTS);
ALTER TABLE ledger_rollup_deltas
    ADD FOREIGN KEY (account_id) REFERENCES accounts (id) ON DELETE CASCADE,
    ADD FOREIGN KEY (connection_id) REFERENCES connections (id) ON DELETE CASCADE;
-- Emptied by every fold: vacuumed after a fixed number of dead rows (not a fraction of a
-- table that is mostly empty), so that readers' index scans do not wade through them.
ALTER TABLE ledger_rollup_deltas SET (autovacuum_vacuum_scale_factor = 0,
                                      autovacuum_vacuum_threshold = 10000,
                                      autovacuum_analyze_scale_factor = 0,
                                      autovacuum_analyze_threshold = 10000);
CREATE INDEX ledger_rollup_deltas_account ON ledger_rollup_deltas (account_id, bucket);
CREATE INDEX ledger_rollup_deltas_connection ON ledger_rollup_deltas (connection_id, bucket);

-- One statement's rows, signed (+1 new, -1 old), summed per (account, connection, bucket);
-- groups whose every figure sums to 0 (an update of last_event, say) write nothing.
CREATE FUNCTION txrelay_ledger_rollup_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_rollup_deltas
    SELECT account_id, connection_id, txrelay_rollup_bucket(accepted_at),
           count(*) FILTER (WHERE state <> 'voided'),
           count(*) FILTER (WHERE state = 'delivered'),
           count(*) FILTER (WHERE state = 'deferred'),
           count(*) FILTER (WHERE state = 'bounced'),
           count(*) FILTER (WHERE state <> 'voided' AND complained_at IS NOT NULL),
           count(*) FILTER (WHERE state IN ('accepted', 'queued')),
           count(*) FILTER (WHERE billing = 'quota'),
           count(*) FILTER (WHERE billing = 'overage'),
           count(*) FILTER (WHERE billing = 'void'),
           count(*) FILTER (WHERE billing = 'pending')
      FROM rollup_new
     GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;

CREATE FUNCTION txrelay_ledger_rollup_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_rollup_deltas
    SELECT * FROM (
        SELECT account_id, connection_id, txrelay_rollup_bucket(accepted_at) AS bucket,
               sum(CASE WHEN state <> 'voided' THEN s ELSE 0 END) AS arrived,
               sum(CASE WHEN state = 'delivered' THEN s ELSE 0 END) AS delivered,
               sum(CASE WHEN state = 'deferred' THEN s ELSE 0 END) AS deferred,
               sum(CASE WHEN state = 'bounced' THEN s ELSE 0 END) AS bounced,
               sum(CASE WHEN state <> 'voided' AND complained_at IS NOT NULL THEN s ELSE 0 END)
                   AS complained,
               sum(CASE WHEN state IN ('accepted', 'queued') THEN s ELSE 0 END) AS in_flight,
               sum(CASE WHEN billing = 'quota' THEN s ELSE 0 END) AS billed_quota,
               sum(CASE WHEN billing = 'overage' THEN s ELSE 0 END) AS billed_overage,
               sum(CASE WHEN billing = 'void' THEN s ELSE 0 END) AS billed_void,
               sum(CASE WHEN billing = 'pending' THEN s ELSE 0 END) AS billed_pending
          FROM (SELECT 1 AS s, account_id, connection_id, accepted_at, state, complained_at,
                       billing FROM rollup_new
                UNION ALL
                SELECT -1, account_id, connection_id, accepted_at, state, complained_at,
                       billing FROM rollup_old) r
         GROUP BY 1, 2, 3) d
     WHERE (arrived, delivered, deferred, bounced, complained, in_flight, billed_quota,
            billed_overage, billed_void, billed_pending) <> (0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    RETURN NULL;
END $$;

CREATE FUNCTION txrelay_ledger_refuse_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('txrelay.pruning', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'ledger rows are deleted only by txrelay db prune (the rollups keep '
                        'their figures)';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_rollup_insert AFTER INSERT ON ledger
    REFERENCING NEW TABLE AS rollup_new
    FOR EACH STATEMENT EXECUTE FUNCTION txrelay_ledger_rollup_insert();
CREATE TRIGGER ledger_rollup_update AFTER UPDATE ON ledger
    REFERENCING OLD TABLE AS rollup_old NEW TABLE AS rollup_new
    FOR EACH STATEMENT EXECUTE FUNCTION txrelay_ledger_rollup_update();
CREATE TRIGGER ledger_refuse_delete BEFORE DELETE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION txrelay_ledger_refuse_delete();

-- The ledger as it stands: one delta per (account, connection, bucket) for the rows
-- recorded before this migration.
INSERT INTO ledger_rollup_deltas
SELECT account_id, connection_id, txrelay_rollup_bucket(accepted_at),
       count(*) FILTER (WHERE state <> 'voided'),
       count(*) FILTER (WHERE state = 'delivered'),
       count(*) FILTER (WHERE state = 'deferred'),
       count(*) FILTER (WHERE state = 'bounced'),
       count(*) FILTER (WHERE state <> 'voided' AND complained_at IS NOT NULL),
       count(*) FILTER (WHERE state IN ('accepted', 'queued')),
       count(*) FILTER (WHERE billing = 'quota'),
       count(*) FILTER (WHERE billing = 'overage'),
       count(*) FILTER (WHERE billing = 'void'),
       count(*) FILTER (WHERE billing = 'pending')
  FROM ledger
 GROUP BY 1, 2, 3;

-- Deltas into ledger_rollups, in one statement (a reader sees them before or after, never
-- twice); rows are upserted in key order, so that two folds running at once wait for each
-- other instead of deadlocking. Returns the number of deltas folded.
CREATE FUNCTION txrelay_fold_rollups() RETURNS bigint
LANGUAGE sql AS $$
    WITH moved AS (
        DELETE FROM ledger_rollup_deltas RETURNING *
    ), summed AS (
        SELECT account_id, connection_id, bucket,
               sum(arrived) AS arrived, sum(delivered) AS delivered,
               sum(deferred) AS deferred, sum(bounced) AS bounced,
               sum(complained) AS complained, sum(in_flight) AS in_flight,
               sum(billed_quota) AS billed_quota, sum(billed_overage) AS billed_overage,
               sum(billed_void) AS billed_void, sum(billed_pending) AS billed_pending
          FROM moved GROUP BY 1, 2, 3
    ), upserted AS (
        INSERT INTO ledger_rollups AS r
        SELECT * FROM summed ORDER BY account_id, connection_id, bucket
        ON CONFLICT (account_id, connection_id, bucket) DO UPDATE SET
            arrived = r.arrived + EXCLUDED.arrived,
            delivered = r.delivered + EXCLUDED.delivered,
            deferred = r.deferred + EXCLUDED.deferred,
            bounced = r.bounced + EXCLUDED.bounced,
            complained = r.complained + EXCLUDED.complained,
            in_flight = r.in_flight + EXCLUDED.in_flight,
            billed_quota = r.billed_quota + EXCLUDED.billed_quota,
            billed_overage = r.billed_overage + EXCLUDED.billed_overage,
            billed_void = r.billed_void + EXCLUDED.billed_void,
            billed_pending = r.billed_pending + EXCLUDED.billed_pending
    )
    SELECT count(*) FROM moved
$$;

SELECT txrelay_fold_rollups();

-- 0033's definition, from the rollups: whole 15-minute buckets inside [from, until) from
-- the rollups, the rest (at most two partial buckets) from the ledger.
CREATE OR REPLACE FUNCTION txrelay_overage_used(p_account_id bigint, p_from timestamptz,
                                                p_until timestamptz)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    WITH inner_range AS (
        SELECT CASE WHEN txrelay_rollup_bucket(p_from) = p_from THEN p_from
                    ELSE txrelay_rollup_bucket(p_from) + interval '15 minutes' END AS lo,
               txrelay_rollup_bucket(p_until) AS hi
    )
    SELECT (SELECT COALESCE(sum(x.billed_overage), 0)
              FROM (SELECT billed_overage, bucket FROM ledger_rollups
                     WHERE account_id = p_account_id
                    UNION ALL
                    SELECT billed_overage, bucket FROM ledger_rollup_deltas
                     WHERE account_id = p_account_id) x, inner_range i
             WHERE i.lo < i.hi AND x.bucket >= i.lo AND x.bucket < i.hi)::bigint
         + (SELECT count(*) FROM ledger l, inner_range i
             WHERE l.account_id = p_account_id AND l.billing = 'overage'
               AND l.accepted_at >= p_from AND l.accepted_at < p_until
               AND (i.lo >= i.hi OR l.accepted_at < i.lo OR l.accepted_at >= i.hi))
         + (SELECT count(*) FROM txrelay_pending_allocation(p_account_id) a
              JOIN ledger l ON l.id = a.row_id
             WHERE a.block_id IS NULL
               AND l.accepted_at >= p_from AND l.accepted_at < p_until)
$$;

INSERT INTO daemon_grants (privileges, objects, why) VALUES
    ('INSERT, DELETE', 'ledger_rollup_deltas',
     'every change of the ledger writes its delta; the tracker''s tick folds them'),
    ('INSERT, UPDATE', 'ledger_rollups', 'the tracker''s tick folds the deltas into them');
