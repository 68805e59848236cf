-- A tracker that reads Postfix's lines from the systemd journal stores the journal cursor of
-- the last entry it applied, in the same transaction as the ledger updates those entries
-- caused (as byte_offset for a file): a restart resumes exactly after it. Its row's log_path
-- is 'journal'; device, inode and fingerprint stay NULL.
ALTER TABLE tracker_positions ADD COLUMN journal_cursor text;
