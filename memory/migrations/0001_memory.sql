-- Per-user memory (shared by every identifier of a user) and per-session state.
-- Times are Unix seconds; user_id is the public id, so memory follows the user, not an identifier.
CREATE TABLE facts (
    user_id TEXT NOT NULL REFERENCES users (public_id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (user_id, kind, key)
);

CREATE TABLE memories (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (public_id) ON DELETE CASCADE,
    content TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX memories_user_idx ON memories (user_id, created_at);

CREATE TABLE user_profiles (
    user_id TEXT PRIMARY KEY REFERENCES users (public_id) ON DELETE CASCADE,
    synopsis TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE working_memory (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (public_id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX working_memory_user_idx ON working_memory (user_id, created_at);

CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (public_id) ON DELETE CASCADE,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    preview TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX credentials_user_idx ON credentials (user_id);

CREATE TABLE scheduled_tasks (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (public_id) ON DELETE CASCADE,
    formation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    schedule TEXT NOT NULL,
    message TEXT NOT NULL,
    next_run DOUBLE PRECISION,
    status TEXT NOT NULL,
    claimed_by TEXT,
    claimed_at DOUBLE PRECISION,
    last_run DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX scheduled_tasks_due_idx ON scheduled_tasks (status, next_run);
CREATE INDEX scheduled_tasks_user_idx ON scheduled_tasks (user_id);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (public_id) ON DELETE CASCADE,
    formation_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    conversation TEXT NOT NULL,
    context TEXT NOT NULL DEFAULT '{}',
    started_at DOUBLE PRECISION NOT NULL,
    last_activity DOUBLE PRECISION NOT NULL
);
CREATE INDEX sessions_conversation_idx ON sessions (user_id, channel, conversation, last_activity);
CREATE INDEX sessions_activity_idx ON sessions (user_id, last_activity);

CREATE TABLE session_messages (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX session_messages_session_idx ON session_messages (session_id, seq);

CREATE TABLE processed_messages (
    formation_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    message_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (formation_id, channel, message_id)
);
