-- The app and environment an audit entry concerns (a deploy, a secret, a
-- job of an app), so `ferry audit --app --env` filters in the store rather
-- than by parsing free text. NULL for entries about no app (tokens,
-- operators, agents).
ALTER TABLE audit_log ADD COLUMN app TEXT;
ALTER TABLE audit_log ADD COLUMN env TEXT;
CREATE INDEX audit_log_app ON audit_log (app, at_ms);
