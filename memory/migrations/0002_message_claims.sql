-- A claimed platform message stays 'processing' until its turn is stored; a claim whose
-- process died is taken over after a lease, so a crash between the two loses nothing.
ALTER TABLE processed_messages ADD COLUMN status TEXT NOT NULL DEFAULT 'done';
