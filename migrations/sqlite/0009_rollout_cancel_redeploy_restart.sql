-- Rollouts learn three words and a request (sqlite). Kept equivalent to
-- migrations/postgres/0009_rollout_cancel_redeploy_restart.sql.
--
-- - kinds `redeploy` (the current release again, containers recreated) and
--   `restart` (the current containers restarted in place);
-- - status `cancelled` (stopped on request; hosts possibly changed went
--   back to the previous release);
-- - who asked to cancel a running rollout, and when: the driver, on
--   whichever coordinator holds the lease, sees it between steps.
--
-- SQLite cannot change a CHECK constraint, so the table is rebuilt: the
-- old one renamed aside, the new one created under the name, the rows
-- copied oldest first (a rollout's previous release and rollback target are
-- older than it, so each row's references exist when it arrives), the old
-- table's self-references cleared so dropping it breaks no key, and the
-- indexes made again. Foreign keys stay on throughout.
PRAGMA defer_foreign_keys = ON;

ALTER TABLE rollouts RENAME TO rollouts_old;
DROP INDEX rollouts_running;
DROP INDEX rollouts_history;

CREATE TABLE rollouts (
    id                  TEXT PRIMARY KEY,
    app                 TEXT NOT NULL,
    env                 TEXT NOT NULL,
    version             TEXT NOT NULL,
    kind                TEXT NOT NULL
                        CHECK (kind IN ('deploy', 'rollback', 'redeploy', 'restart')),
    status              TEXT NOT NULL
                        CHECK (status IN ('running', 'succeeded', 'failed', 'reverted', 'revert_failed', 'cancelled')),
    protected           BOOLEAN NOT NULL,
    spec_json           TEXT NOT NULL,
    plan_json           TEXT NOT NULL,
    previous_id         TEXT REFERENCES rollouts (id),
    previous_version    TEXT,
    rollback_of         TEXT REFERENCES rollouts (id),
    steps_json          TEXT NOT NULL DEFAULT '[]',
    message             TEXT NOT NULL DEFAULT '',
    created_by          TEXT NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    finished_at_ms      INTEGER,
    owner               TEXT,
    lease_expires_at_ms INTEGER NOT NULL,
    traceparent         TEXT NOT NULL,
    -- `ferry rollout cancel`: who asked (SPIFFE URI of the operator), when.
    cancel_requested_by    TEXT,
    cancel_requested_at_ms INTEGER
);

INSERT INTO rollouts (id, app, env, version, kind, status, protected, spec_json,
    plan_json, previous_id, previous_version, rollback_of, steps_json, message, created_by,
    created_at_ms, updated_at_ms, finished_at_ms, owner, lease_expires_at_ms, traceparent)
SELECT id, app, env, version, kind, status, protected, spec_json,
    plan_json, previous_id, previous_version, rollback_of, steps_json, message, created_by,
    created_at_ms, updated_at_ms, finished_at_ms, owner, lease_expires_at_ms, traceparent
FROM rollouts_old
ORDER BY created_at_ms, id;

UPDATE rollouts_old SET previous_id = NULL, rollback_of = NULL;
DROP TABLE rollouts_old;

-- The deploy lock: one running rollout per (app, env).
CREATE UNIQUE INDEX rollouts_running ON rollouts (app, env) WHERE status = 'running';
-- Release history, newest first.
CREATE INDEX rollouts_history ON rollouts (app, env, created_at_ms DESC);
