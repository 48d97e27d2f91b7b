-- Each identifier keeps its owner's public id beside the owner's row id, so resolving an
-- identifier reads one index entry and one row instead of joining users. A trigger keeps
-- it whoever writes user_id (links, merges, undone merges). Left nullable so that a row
-- naming no user still fails on its foreign key, as before.
ALTER TABLE user_identifiers ADD COLUMN owner TEXT;
UPDATE user_identifiers AS i SET owner = u.public_id FROM users AS u WHERE u.id = i.user_id;
CREATE FUNCTION user_identifiers_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.owner := (SELECT public_id FROM users WHERE id = NEW.user_id);
    RETURN NEW;
END
$$;
CREATE TRIGGER user_identifiers_owner BEFORE INSERT OR UPDATE OF user_id ON user_identifiers
    FOR EACH ROW EXECUTE FUNCTION user_identifiers_owner();
