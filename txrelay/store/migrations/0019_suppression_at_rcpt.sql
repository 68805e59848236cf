-- Suppression at RCPT: every milter node keeps the suppression lists in memory and reads
-- only what changed since its last poll (txrelay/store/suppression_cache.py).
--
-- Every write of a suppressions row (a new one, a replacement, a removal) gets a fresh
-- change_id and the id of the transaction that wrote it (change_xid). A node asks for the
-- rows written by transactions its previous read could not see yet (change_xid at or above
-- that read's snapshot xmin): no change is missed, whatever order the writers commit in.
-- A removal keeps the row with removed_at set, so that other nodes learn of it.
CREATE SEQUENCE suppressions_change_seq;
ALTER TABLE suppressions ADD COLUMN change_id bigint NOT NULL
    DEFAULT nextval('suppressions_change_seq');
ALTER TABLE suppressions ADD COLUMN change_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE suppressions ADD COLUMN removed_at timestamptz;
ALTER SEQUENCE suppressions_change_seq OWNED BY suppressions.change_id;
CREATE INDEX suppressions_change_xid ON suppressions (change_xid);

CREATE FUNCTION txrelay_suppression_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_id := nextval('suppressions_change_seq');
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END $$;
CREATE TRIGGER suppressions_changed BEFORE UPDATE ON suppressions
    FOR EACH ROW EXECUTE FUNCTION txrelay_suppression_changed();

-- Recipients the milter refused because they are suppressed, per connection and 15-minute
-- bucket (for `txrelay stats`). Each milter adds its counts in one statement per flush.
CREATE TABLE suppressed_counts (
    connection_id bigint NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    bucket        timestamptz NOT NULL,  -- the start of the 15-minute bucket
    refused       bigint NOT NULL CHECK (refused >= 0),
    PRIMARY KEY (connection_id, bucket)
);

-- The milter's role may only add to the counts, through this function (the daemon role
-- executes every function; it has no write right on the table itself).
CREATE FUNCTION txrelay_count_suppressed(p_connections bigint[], p_buckets timestamptz[],
                                         p_counts bigint[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public AS $$
    INSERT INTO suppressed_counts AS s (connection_id, bucket, refused)
    SELECT c, b, n FROM unnest(p_connections, p_buckets, p_counts) AS u (c, b, n)
     WHERE EXISTS (SELECT 1 FROM connections WHERE id = u.c)
    ON CONFLICT (connection_id, bucket) DO UPDATE SET refused = s.refused + EXCLUDED.refused
$$;
