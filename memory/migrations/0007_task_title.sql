-- A scheduled task may carry a title (the SDK's update_scheduler_job sends one). A paused
-- task has status 'paused': it keeps its next_run, and no scheduler claims it.
ALTER TABLE scheduled_tasks ADD COLUMN title TEXT;
