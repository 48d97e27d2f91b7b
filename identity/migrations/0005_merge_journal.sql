-- The merge journal: one row per merge of two users, enough to show it and to undo it
-- within a retention window. No foreign keys to users: the merged-away user is gone, and
-- the kept one may go too; the undo checks. Times are Unix seconds; JSON in TEXT columns.
--   merged_created_at  the merged-away user's created_at as stored, so an undo recreates
--                      it with the same public id and the same creation time
--   identifiers        [{"key", "type", "created_at"}] that moved to the kept user
--   parts              what each merge hook moved, by part ({"memory": {...}}); NULL once
--                      expires_at has passed (the journal then keeps who and when only)
CREATE TABLE merge_journal (
    id TEXT PRIMARY KEY,
    formation_id TEXT NOT NULL,
    kept_user TEXT NOT NULL,
    merged_user TEXT NOT NULL,
    merged_created_at TEXT NOT NULL,
    identifiers TEXT NOT NULL,
    parts TEXT,
    actor TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    undone_at DOUBLE PRECISION,
    undone_by TEXT
);
CREATE INDEX merge_journal_kept_idx ON merge_journal (formation_id, kept_user, at);
CREATE INDEX merge_journal_merged_idx ON merge_journal (formation_id, merged_user, at);
CREATE INDEX merge_journal_expires_idx ON merge_journal (expires_at);
