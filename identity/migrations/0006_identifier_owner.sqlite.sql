-- Each identifier keeps its owner's public id beside the owner's row id, so resolving an
-- identifier reads one index entry and one row instead of joining users. Triggers keep it
-- whoever writes user_id (links, merges, undone merges).
ALTER TABLE user_identifiers ADD COLUMN owner TEXT;
UPDATE user_identifiers SET owner = (SELECT public_id FROM users WHERE users.id = user_identifiers.user_id);
CREATE TRIGGER user_identifiers_owner_insert AFTER INSERT ON user_identifiers
BEGIN
    UPDATE user_identifiers SET owner = (SELECT public_id FROM users WHERE id = NEW.user_id)
    WHERE id = NEW.id;
END;
CREATE TRIGGER user_identifiers_owner_update AFTER UPDATE OF user_id ON user_identifiers
BEGIN
    UPDATE user_identifiers SET owner = (SELECT public_id FROM users WHERE id = NEW.user_id)
    WHERE id = NEW.id;
END;
