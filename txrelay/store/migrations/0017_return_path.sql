-- The return path: a sending domain's own bounce domain, and connections that keep theirs.
--
-- sending_domains.return_path: the host the domain's mail gets as envelope sender domain
-- (b-TOKEN@HOST) and CFBL-Address (fbl@HOST), so that SPF and the complaint address align
-- with the domain; NULL: the relay-wide [bounce] domain. Always the domain itself or a
-- subdomain of it (checked by the CLI; the check below keeps the database honest too).
ALTER TABLE sending_domains ADD COLUMN return_path text
    CHECK (return_path IS NULL OR (return_path = lower(return_path)
           AND length(return_path) <= 253
           AND (return_path = domain OR right(return_path, length(domain) + 1) = '.' || domain)));

-- connections.bounces: 'relay' (the envelope sender becomes the relay's return path) or
-- 'keep' (the shop's own envelope sender stays: the shop processes its bounces itself).
ALTER TABLE connections ADD COLUMN bounces text NOT NULL DEFAULT 'relay'
    CHECK (bounces IN ('relay', 'keep'));

-- The milter's snapshot carries both: changing bounces changes the policy version too
-- (sending_domains bumps it on every update already).
DROP TRIGGER connections_policy_update ON connections;
CREATE TRIGGER connections_policy_update
    AFTER UPDATE OF name, enabled, rate_limit, deleted_at, bounces ON connections
    FOR EACH STATEMENT EXECUTE FUNCTION bump_policy_version();
