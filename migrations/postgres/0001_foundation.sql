-- Foundation of the coordinator's schema (PostgreSQL). Kept equivalent to
-- migrations/sqlite/0001_foundation.sql: same tables, columns, constraints
-- and indexes. Timestamps are unix milliseconds; ids are UUID text (as in
-- SQLite, so both backends share row decoding); labels and health are JSON
-- text. Names sort with the "C" collation, byte order, as SQLite does.

-- Facts about the store itself, e.g. that the first admin was bootstrapped.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE agents (
    id                TEXT PRIMARY KEY,
    name              TEXT COLLATE "C" NOT NULL,
    hostname          TEXT NOT NULL,
    labels_json       TEXT NOT NULL,
    version           TEXT NOT NULL,
    enrolled_at_ms    BIGINT NOT NULL,
    last_seen_ms      BIGINT NOT NULL DEFAULT 0,
    connected_to      TEXT,
    revoked_at_ms     BIGINT,
    cert_serial       TEXT NOT NULL,
    cert_not_after_ms BIGINT NOT NULL,
    health_json       TEXT
);

-- A name belongs to at most one live agent; revoked agents keep theirs, so
-- a host can be re-enrolled under its old name after a revoke. Enrollment
-- maps a violation of this index to "name taken" (by the index's name).
CREATE UNIQUE INDEX agents_active_name ON agents (name) WHERE revoked_at_ms IS NULL;
-- Listing (by name, then enrollment) and lookup by name among revoked ones.
CREATE INDEX agents_name_enrolled ON agents (name, enrolled_at_ms);

CREATE TABLE join_tokens (
    token_hash    TEXT PRIMARY KEY,
    name          TEXT,
    labels_json   TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms    BIGINT,
    used_by       TEXT REFERENCES agents (id)
);

CREATE INDEX join_tokens_created ON join_tokens (created_at_ms);

-- The name is the key and rows are never deleted: a revoked operator's name
-- stays reserved, so an old certificate can never map to a new person.
CREATE TABLE operators (
    name          TEXT COLLATE "C" PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'deployer', 'admin')),
    created_at_ms BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE TABLE audit_log (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);

-- Newest first; id breaks ties between entries of the same millisecond.
CREATE INDEX audit_log_at ON audit_log (at_ms, id);
