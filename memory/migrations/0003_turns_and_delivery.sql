-- A turn is one unit of work: the claim of a platform message completes in the turn's own
-- transaction and keeps the reply, so a redelivery gets the stored answer, never a new turn.
-- Status: processing -> answered (stored, not yet said) -> sent. Older rows say 'done' (= sent).
ALTER TABLE processed_messages ADD COLUMN claim_token TEXT;
ALTER TABLE processed_messages ADD COLUMN reply TEXT;
-- A scheduled task remembers where it was asked, and how its delivery went.
ALTER TABLE scheduled_tasks ADD COLUMN channel TEXT;
ALTER TABLE scheduled_tasks ADD COLUMN conversation TEXT;
ALTER TABLE scheduled_tasks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE scheduled_tasks ADD COLUMN last_error TEXT;
ALTER TABLE scheduled_tasks ADD COLUMN delivered_via TEXT;
