-- DKIM must be published before live mail, and a domain may sign with two keys at once.
--
-- dkim_published_at: when `domain check` (or the tracker) first found every signing key's
-- record in DNS. NULL = pending: the milter refuses the domain's live mail and names the
-- record to publish ([dkim] require_published). Once set it stays: a later failing check is
-- reported, but a DNS hiccup never stops a shop's mail. Domains that existed before this
-- migration were already sending, so they count as published from now on.
--
-- second_dkim_key_id: a second signing key of the other algorithm (RSA next to Ed25519,
-- RFC 8463 section 3); each message then carries both signatures. A rotation's pending key
-- replaces the signing key of its own algorithm when switched.
ALTER TABLE sending_domains
    ADD COLUMN second_dkim_key_id bigint REFERENCES dkim_keys (id),
    ADD COLUMN dkim_published_at timestamptz,
    ADD CONSTRAINT sending_domains_two_keys CHECK (second_dkim_key_id <> dkim_key_id);
UPDATE sending_domains SET dkim_published_at = now();
CREATE INDEX sending_domains_second_key ON sending_domains (second_dkim_key_id)
    WHERE second_dkim_key_id IS NOT NULL;

-- The last DKIM publication check of each domain: a table of its own, so that recording a
-- check does not bump the policy version (only the change to published does).
CREATE TABLE dkim_publication_checks (
    domain_id  bigint PRIMARY KEY REFERENCES sending_domains (id) ON DELETE CASCADE,
    checked_at timestamptz NOT NULL,
    published  boolean NOT NULL,
    detail     text NOT NULL
);
