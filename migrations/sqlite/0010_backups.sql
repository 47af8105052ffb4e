-- Backups: the catalogue of every backup an agent made, and each (app,
-- env)'s database settings from the last app file the coordinator was given
-- (sqlite). Kept equivalent to migrations/postgres/0010_backups.sql: same
-- tables, columns, constraints and indexes.
--
-- A backup is catalogued in the transaction that stores its task's success
-- (the manifest is the task's result), so a failed or lost task never is.
-- The file is on its host (`host`, `path`); copies elsewhere (object
-- storage) would be rows of a table of their own, keyed by backup id.

CREATE TABLE backups (
    -- The task that made it (one task, at most one backup).
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL,
    -- The agent holding the file.
    host            TEXT NOT NULL,
    app             TEXT NOT NULL,
    env             TEXT NOT NULL,
    database_name   TEXT NOT NULL,
    engine          TEXT NOT NULL,
    path            TEXT NOT NULL,
    size_bytes      INTEGER NOT NULL,
    sha256          TEXT NOT NULL,
    reason          TEXT NOT NULL
                    CHECK (reason IN ('manual', 'scheduled', 'pre-migration', 'pre-deploy')),
    created_at_ms   INTEGER NOT NULL,
    -- When retention lets it go; NULL: kept until a rule says otherwise.
    expires_at_ms   INTEGER,
    verified_at_ms  INTEGER,
    verify_result   TEXT CHECK (verify_result IN ('passed', 'failed')),
    verify_message  TEXT NOT NULL DEFAULT '',
    -- The whole manifest (ferry_common::job::BackupManifest): row counts
    -- for verification, versions, how to restore by hand.
    manifest_json   TEXT NOT NULL
);

-- Listings: one database's backups, newest first.
CREATE INDEX backups_by_database ON backups (app, env, database_name, created_at_ms DESC);

-- [databases.NAME] of the last app file given for (app, env), as JSON
-- (ferry_common::appfile::Database), so later commands that name only the
-- app and environment use the same settings.
CREATE TABLE database_settings (
    app             TEXT NOT NULL,
    env             TEXT NOT NULL,
    name            TEXT NOT NULL,
    settings_json   TEXT NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (app, env, name)
);
