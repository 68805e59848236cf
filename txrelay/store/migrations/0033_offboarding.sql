-- Offboarding and spending caps (issue 14, items 5 and 7).
--
--   accounts.disabled_at   set by 'account disable': the milter refuses the account's mail at
--                          MAIL with a reply that says so; cleared by 'account enable'.
--   accounts.deleted_at    set by 'account delete': the row stays, as the ledger and the
--                          billing retention need it; connections, credentials, domains and
--                          DKIM keys are gone. The name is free again for a new account.
--   accounts.overage_cap   recipients per billing period (calendar month, UTC) a paid
--                          account may send beyond its quota; NULL = unlimited, 0 = refused
--                          at quota like a demo account.
--   txrelay_overage_used(account, from, until)   the account's overage recipients accepted
--                          in [from, until): settled rows billed 'overage' plus pending rows
--                          settling would make overage (txrelay_pending_allocation). The one
--                          definition the billing report, the cap's Redis counter and the
--                          degraded-mode fallback share.

ALTER TABLE accounts
    ADD COLUMN disabled_at timestamptz,
    ADD COLUMN deleted_at  timestamptz,
    ADD COLUMN overage_cap integer CHECK (overage_cap IS NULL OR overage_cap >= 0);

ALTER TABLE accounts DROP CONSTRAINT accounts_name_key;
CREATE UNIQUE INDEX accounts_live_name ON accounts (name) WHERE deleted_at IS NULL;

CREATE FUNCTION txrelay_overage_used(p_account_id bigint, p_from timestamptz,
                                     p_until timestamptz)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM ledger l
             WHERE l.account_id = p_account_id AND l.billing = 'overage'
               AND l.accepted_at >= p_from AND l.accepted_at < p_until)
         + (SELECT count(*) FROM txrelay_pending_allocation(p_account_id) a
              JOIN ledger l ON l.id = a.row_id
             WHERE a.block_id IS NULL
               AND l.accepted_at >= p_from AND l.accepted_at < p_until)
$$;
