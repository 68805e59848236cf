-- The tracker's tick makes the dashboard link a low-quota reminder carries ([web]
-- reminder_link_days): the daemons' role inserts web_links rows. Revoking stays the admin's.
INSERT INTO daemon_grants (privileges, objects, why) VALUES
    ('INSERT', 'web_links', 'the tick makes the dashboard link of a low-quota reminder');
