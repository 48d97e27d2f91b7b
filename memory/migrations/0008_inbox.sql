-- The inbox: a platform message is written with its content (`payload`, the normalized
-- message as JSON) before the platform gets its acknowledgement ('queued'), and a claim
-- keeps the payload while it is worked on, so any replica can answer a message whose
-- process died between the acknowledgement and the answer. Cleared once the reply is said.
ALTER TABLE processed_messages ADD COLUMN payload TEXT;
CREATE INDEX processed_messages_inbox_idx ON processed_messages (status, created_at);
