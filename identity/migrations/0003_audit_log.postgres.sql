-- Who changed which identifiers of which user: link, unlink, merge, code redemption.
-- Written in the change's own transaction; appended, never changed or removed. No foreign
-- key to users: the record of a merged-away user outlives that user. Times are Unix seconds.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    formation_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    user_id TEXT,
    identifier TEXT,
    identifier_type TEXT,
    before_state TEXT,
    after_state TEXT
);
CREATE INDEX audit_log_formation_idx ON audit_log (formation_id, at);
CREATE INDEX audit_log_user_idx ON audit_log (formation_id, user_id, at);
CREATE INDEX audit_log_identifier_idx ON audit_log (formation_id, identifier, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
