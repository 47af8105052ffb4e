-- Schedules: cron-timed backup, verify and prune runs of a database of an
-- (app, env), fired by the coordinator that leads (postgres). Kept equivalent to
-- migrations/sqlite/0011_schedules.sql: same table, columns, constraints
-- and indexes.
--
-- A run is claimed by moving next_run_at_ms with a compare-and-set
-- (`WHERE id = ? AND next_run_at_ms = <the value read>`), so two
-- coordinators that both believe they lead never fire it twice. The outcome
-- of the last run is not stored: it is read from its job (last_job_id) at
-- read time, so it is always the job's; last_error says why a run could not
-- even submit its job (then there is no job).

CREATE TABLE schedules (
    id                     TEXT PRIMARY KEY,
    app                    TEXT NOT NULL,
    env                    TEXT NOT NULL,
    database_name          TEXT NOT NULL,
    kind                   TEXT NOT NULL CHECK (kind IN ('backup', 'verify', 'prune')),
    -- Five fields, as crontab, evaluated in `timezone` (IANA).
    cron                   TEXT NOT NULL,
    timezone               TEXT NOT NULL,
    -- 'app-file': registered by `ferry schedule apply` / `ferry deploy`
    -- from [databases.NAME.backup], replaced by the next app file;
    -- 'manual': `ferry schedule add`, left alone by apply.
    source                 TEXT NOT NULL CHECK (source IN ('app-file', 'manual')),
    created_at_ms          BIGINT NOT NULL,
    created_by             TEXT NOT NULL,
    -- When the next run is due.
    next_run_at_ms         BIGINT NOT NULL,
    -- The last run: when it was fired, the time it was due for, whether it
    -- fired later than its grace allows, its job, or why it has none.
    last_run_at_ms         BIGINT,
    last_scheduled_for_ms  BIGINT,
    last_late              BOOLEAN NOT NULL DEFAULT FALSE,
    last_job_id            TEXT,
    last_error             TEXT NOT NULL DEFAULT ''
);

-- Firing: what is due.
CREATE INDEX schedules_due ON schedules (next_run_at_ms);
-- Listings by app and environment.
CREATE INDEX schedules_by_app ON schedules (app, env, database_name, kind);
-- The app file has at most one schedule of each kind per database.
CREATE UNIQUE INDEX schedules_app_file ON schedules (app, env, database_name, kind)
    WHERE source = 'app-file';
