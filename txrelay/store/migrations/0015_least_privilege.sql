-- Least privilege for the daemons, and DKIM private keys sealed at rest.
--
-- dkim_keys.private_key_pem keeps its name but now holds the key sealed with the node's
-- key-encryption key ('txrelay-aes256gcm:<kek id>:<base64>', txrelay/kek.py); a PEM in
-- clear is a key stored before this release, until 'txrelay keys encrypt' seals it (this
-- migration cannot: the KEK is a file on the relay node, not in the database).
COMMENT ON COLUMN dkim_keys.private_key_pem IS
    'sealed with the KEK (txrelay-aes256gcm:...); clear PEM only until txrelay keys encrypt';

-- What the milter and the tracker may do, in one place: read the policy, write the ledger.
-- The role may not exist in every deployment, so this migration grants nothing itself:
-- txrelay init and txrelay db migrate call it (as the owner) for the role of [database]
-- milter_url, after every migration, so tables added later are granted too. A migration
-- that adds a table the daemons write replaces this function.
CREATE FUNCTION txrelay_grant_daemon_role(p_role text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO %I', p_role);
    -- The ledger and its companions: the milter records and settles, the tracker follows
    -- delivery, renews plans and sends reminders.
    EXECUTE format('GRANT INSERT, UPDATE, DELETE ON messages, ledger, quota_holds, '
                   'tracker_positions, tracker_anomalies, tracker_pending_events, '
                   'notifications, quota_reminders, quota_plans TO %I', p_role);
    -- Settling and renewals change a block's use and add renewed blocks (that insert bumps
    -- the policy version through its trigger, which runs as the daemon).
    EXECUTE format('GRANT INSERT, UPDATE ON quota_blocks TO %I', p_role);
    EXECUTE format('GRANT UPDATE ON policy_version TO %I', p_role);
    EXECUTE format('GRANT UPDATE (last_used_at) ON connections TO %I', p_role);
    -- Nothing else: accounts, keys, domains, connections' policy columns and credentials
    -- are the admin's (the CLI's role).
END $$;
