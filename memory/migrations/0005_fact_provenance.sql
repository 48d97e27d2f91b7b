-- Where a fact came from: {"channel", "message_id", "at", "by"} as JSON (by: model or rules).
ALTER TABLE facts ADD COLUMN source TEXT;
