-- Erasing a user blanks what the audit log says about them (the user, the identifier, the
-- states before and after), keeping that a change happened, what kind, when and by whom.
-- That is the only change a record allows; nothing may remove one.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.formation_id = OLD.formation_id
            AND NEW.at = OLD.at AND NEW.actor = OLD.actor AND NEW.action = OLD.action
            AND NEW.user_id IS NULL AND NEW.identifier IS NULL
            AND NEW.before_state IS NULL AND NEW.after_state = '{"erased": true}' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (an erasure may only blank a record''s personal fields)';
END
$$;
