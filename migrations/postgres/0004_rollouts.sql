-- Rollouts: releases of an app to an environment's hosts, batch by batch,
-- which are also the release history (postgres). Kept equivalent to
-- migrations/sqlite/0004_rollouts.sql: same tables, columns, constraints
-- and indexes.
--
-- A running rollout is the (app, env) deploy lock: the partial unique index
-- allows one per (app, env). The coordinator driving it (`owner`) renews
-- its lease; when the lease runs out (the coordinator died), another one
-- takes the rollout over and finishes it, so the lock is never stuck.

CREATE TABLE rollouts (
    id                  TEXT PRIMARY KEY,
    app                 TEXT NOT NULL,
    env                 TEXT NOT NULL,
    version             TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback')),
    status              TEXT NOT NULL
                        CHECK (status IN ('running', 'succeeded', 'failed', 'reverted', 'revert_failed')),
    -- Asked for confirmation (production, or protected = true).
    protected           BOOLEAN NOT NULL,
    -- The ferry_common::job::DeploySpec every host of the rollout gets.
    spec_json           TEXT NOT NULL,
    -- Hosts in batches, smoke checks, selector (coordinator::rollout::Plan).
    plan_json           TEXT NOT NULL,
    -- The release a failure reverts to (the last succeeded one), if any.
    previous_id         TEXT REFERENCES rollouts (id),
    previous_version    TEXT,
    -- For a rollback: the rollout whose release it redeploys.
    rollback_of         TEXT REFERENCES rollouts (id),
    -- The jobs run so far (coordinator::rollout::Step), for display.
    steps_json          TEXT NOT NULL DEFAULT '[]',
    message             TEXT NOT NULL DEFAULT '',
    created_by          TEXT NOT NULL,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    finished_at_ms      BIGINT,
    -- The coordinator driving it, and until when that holds.
    owner               TEXT,
    lease_expires_at_ms BIGINT NOT NULL,
    traceparent         TEXT NOT NULL
);

-- The deploy lock: one running rollout per (app, env).
CREATE UNIQUE INDEX rollouts_running ON rollouts (app, env) WHERE status = 'running';
-- Release history, newest first.
CREATE INDEX rollouts_history ON rollouts (app, env, created_at_ms DESC);
