-- Users and the identifiers that lead to them, scoped per formation.
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    formation_id TEXT NOT NULL,
    public_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX users_formation_idx ON users (formation_id);

CREATE TABLE user_identifiers (
    id INTEGER PRIMARY KEY,
    formation_id TEXT NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    identifier TEXT NOT NULL,
    type TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT user_identifiers_unique UNIQUE (formation_id, identifier)
);
CREATE INDEX user_identifiers_user_idx ON user_identifiers (user_id);
