-- DKIM key rotation: keys a domain publishes in DNS but does not sign with.
--
-- sending_domains.dkim_key_id stays the one key a domain signs with (the milter's policy
-- reads nothing else). A rotation adds a 'pending' key here (its TXT record is being
-- published, nothing is signed with it yet); the switch makes it the signing key and puts
-- the old one here as 'retiring' (its record must stay published while mail signed with it
-- is still in flight or in receivers' queues); retiring it deletes the row.
CREATE TABLE dkim_key_rotations (
    domain_id   bigint NOT NULL REFERENCES sending_domains (id) ON DELETE CASCADE,
    dkim_key_id bigint NOT NULL REFERENCES dkim_keys (id) ON DELETE CASCADE,
    state       text NOT NULL CHECK (state IN ('pending', 'retiring')),
    since       timestamptz NOT NULL,
    PRIMARY KEY (domain_id, dkim_key_id)
);
-- One rotation at a time per domain: a second new key before the first is live is a mistake.
CREATE UNIQUE INDEX dkim_key_rotations_one_pending ON dkim_key_rotations (domain_id)
    WHERE state = 'pending';
CREATE INDEX dkim_key_rotations_key ON dkim_key_rotations (dkim_key_id);
