-- Log events the tracker read before the ledger knew their queue id.
--
-- While PostgreSQL is down the milter journals its ledger records and replays them when
-- PostgreSQL returns; Postfix delivers those messages meanwhile, and the tracker may read
-- their qmgr and delivery lines before the replay. Such a line is kept here (the line itself,
-- parsed again when applied) in the transaction that moves the tracker past it, and applied
-- in log order (id) and deleted in one transaction once the message row exists. Lines of
-- queue ids that never become txrelay's (Postfix's own bounces, local mail) are deleted
-- after tracking.PENDING_EVENT_RETENTION (7 days).
CREATE TABLE tracker_pending_events (
    id        bigserial PRIMARY KEY,
    node      text NOT NULL,
    queue_id  text NOT NULL,
    line      text NOT NULL,
    seen_at   timestamptz NOT NULL       -- when the tracker read it (after Postfix logged it)
);
CREATE INDEX tracker_pending_events_queue ON tracker_pending_events (node, queue_id, id);
CREATE INDEX tracker_pending_events_seen ON tracker_pending_events (seen_at);
