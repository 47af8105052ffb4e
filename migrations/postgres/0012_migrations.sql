-- Migrations (`ferry migrate`): at most one migrate job per (app, env,
-- database) at a time across the whole fleet, and the tenant of each
-- pre-migration backup in the catalogue. Kept equivalent on both backends.
--
-- A run is claimed by inserting its row (the primary key refuses a second
-- one) in the transaction that first drops the row of a run whose job has
-- ended; the row is deleted when its task finishes, and a row whose job is
-- final (failed, cancelled, its task lost) never blocks a new run. `job_id`
-- is NULL only between the claim and the job's submission, which follow
-- each other at once; such a row older than a minute is stale.
CREATE TABLE migration_runs (
    app             TEXT NOT NULL,
    env             TEXT NOT NULL,
    database_name   TEXT NOT NULL,
    job_id          TEXT,
    claimed_by      TEXT NOT NULL,
    claimed_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (app, env, database_name)
);

-- A backup of a tenant database of `database_name` (its name on the
-- server); NULL: the database itself.
ALTER TABLE backups ADD COLUMN tenant TEXT;
