-- How many turns failed on a kept message: it goes back to the inbox after a failure and is
-- tried again, a few times at most (a message that always fails must not loop forever).
ALTER TABLE processed_messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
