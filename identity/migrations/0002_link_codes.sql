-- One-time codes a person uses to link a second channel to themselves (/link), and the
-- failed attempts that rate-limit guessing. Codes are stored hashed.
CREATE TABLE link_codes (
    code_hash TEXT PRIMARY KEY,
    formation_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (public_id) ON DELETE CASCADE,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX link_codes_user_idx ON link_codes (user_id);

CREATE TABLE link_attempts (
    formation_id TEXT NOT NULL,
    identifier TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX link_attempts_idx ON link_attempts (formation_id, identifier, at);
