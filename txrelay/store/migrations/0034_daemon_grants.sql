-- The daemons' rights as rows, not as a function each migration copies.
--
-- Migrations 0015 and 0032 each wrote txrelay_grant_daemon_role with the whole list plus
-- their own lines, and two such copies written at the same time drop each other's lines
-- (0016's and 0018's tables have their rows here). From here on a migration that adds a table the daemons (milter, tracker, webhook
-- worker, inbound pipe) write INSERTs its row into daemon_grants; the function, called by
-- `txrelay init` and every `txrelay db migrate` for the role of [database] milter_url,
-- grants what the table lists. Reading is granted on every table, as before.
CREATE TABLE daemon_grants (
    privileges text NOT NULL CHECK (privileges ~ '^[A-Z, ]+( \([a-z_, ]+\))?$'),
    objects    text NOT NULL CHECK (objects ~ '^[a-z_, ]+$'),
    why        text NOT NULL,
    PRIMARY KEY (privileges, objects)
);

INSERT INTO daemon_grants (privileges, objects, why) VALUES
    ('INSERT, UPDATE, DELETE',
     'messages, ledger, quota_holds, tracker_positions, tracker_anomalies, '
     'tracker_pending_events, notifications, quota_reminders, quota_plans',
     'the milter records and settles; the tracker follows delivery, renews plans, reminds'),
    ('INSERT, UPDATE', 'quota_blocks',
     'settling changes a block''s use; renewals add blocks (their trigger bumps the policy)'),
    ('UPDATE', 'policy_version', 'the renewal trigger bumps it, running as the daemon'),
    ('UPDATE (last_used_at)', 'connections', 'the milter notes when a connection was used'),
    ('INSERT, UPDATE', 'suppressions, webhook_outbox',
     'bounces and complaints suppress recipients and queue events; the worker delivers them'),
    ('INSERT', 'inbound_mail', 'txrelay inbound deliver records each mail to the bounce domain'),
    ('INSERT, UPDATE', 'dkim_publication_checks',
     'the tracker''s tick looks pending domains'' DKIM records up'),
    ('UPDATE (dkim_published_at)', 'sending_domains',
     'the tick marks a domain published, nothing else of the domain');

CREATE OR REPLACE FUNCTION txrelay_grant_daemon_role(p_role text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g record;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO %I', p_role);
    FOR g IN SELECT privileges, objects FROM daemon_grants ORDER BY objects LOOP
        EXECUTE format('GRANT %s ON %s TO %I', g.privileges, g.objects, p_role);
    END LOOP;
    -- Nothing else: accounts, keys, domains, connections' policy columns, credentials and
    -- webhooks are the admin's (the CLI's role).
END $$;
