-- Jobs, their tasks (one per agent) and their event log (PostgreSQL). Kept
-- equivalent to migrations/sqlite/0002_jobs.sql: same tables, columns,
-- constraints and indexes. States are the strings of
-- `coordinator::job::{JobStatus, TaskState}`; event bodies are prost-encoded
-- `ferry.v1.EventBody`, opaque to the database.

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    spec_json        TEXT NOT NULL,
    target_json      TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    created_by       TEXT NOT NULL,
    idempotency_key  TEXT,
    created_at_ms    BIGINT NOT NULL,
    updated_at_ms    BIGINT NOT NULL,
    finished_at_ms   BIGINT,
    deadline_ms      BIGINT NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    -- The last job event seq handed out; the next event gets last_seq + 1,
    -- allocated while the job's row is locked, so seqs have no gaps and
    -- commits of one job's events are serialised.
    last_seq         BIGINT NOT NULL DEFAULT 0,
    traceparent      TEXT NOT NULL
);

-- A retried submission with the same key finds the first job.
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Listing, newest first.
CREATE INDEX jobs_created ON jobs (created_at_ms DESC, id DESC);

CREATE TABLE tasks (
    id             TEXT PRIMARY KEY,
    job_id         TEXT NOT NULL REFERENCES jobs (id),
    agent_id       TEXT NOT NULL REFERENCES agents (id),
    -- The agent's name when the job was created, for listings and events.
    agent_name     TEXT COLLATE "C" NOT NULL,
    state          TEXT NOT NULL
                   CHECK (state IN ('pending', 'assigned', 'running', 'succeeded', 'failed', 'cancelled',
                                    'lost', 'expired')),
    attempt        BIGINT NOT NULL DEFAULT 0,
    -- Highest agent event seq stored with no gap before it.
    last_seq       BIGINT NOT NULL DEFAULT 0,
    assigned_by    TEXT,
    started_at_ms  BIGINT,
    finished_at_ms BIGINT,
    message        TEXT NOT NULL DEFAULT '',
    result_json    TEXT,
    updated_at_ms  BIGINT NOT NULL
);

-- Claiming pending work for the agents of a session; an agent's active tasks.
CREATE INDEX tasks_state_agent ON tasks (state, agent_id);
CREATE INDEX tasks_job ON tasks (job_id);

-- No foreign keys here: this is the hot table (a foreign key costs a
-- lookup and a row lock per inserted event), and only the store writes it,
-- after locking the job and task rows in the same transaction.
CREATE TABLE job_events (
    job_id   TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    at_ms    BIGINT NOT NULL,
    task_id  TEXT,
    -- The agent's per-task seq; NULL for events the coordinator wrote.
    task_seq BIGINT,
    body     BYTEA NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Each agent event is stored once.
CREATE UNIQUE INDEX job_events_task_seq ON job_events (task_id, task_seq) WHERE task_id IS NOT NULL;
