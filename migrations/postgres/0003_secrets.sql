-- Secrets per (app, env) (PostgreSQL). Kept equivalent to
-- migrations/sqlite/0003_secrets.sql: same tables, columns, constraints
-- and indexes. The store only ever holds ciphertext: the coordinator seals
-- each value with XChaCha20-Poly1305 under its secrets key before writing
-- it, with "app\0env\0name" as associated data, so a row's ciphertext
-- cannot be moved to another secret. Every coordinator sharing this
-- database must use the same secrets key. Names sort with the "C"
-- collation, byte order, as SQLite does.

CREATE TABLE secrets (
    app           TEXT COLLATE "C" NOT NULL,
    env           TEXT COLLATE "C" NOT NULL,
    -- An environment variable name, as the deploy job sets it.
    name          TEXT COLLATE "C" NOT NULL,
    -- The random 24-byte nonce this value was sealed with.
    nonce         BYTEA NOT NULL,
    -- The sealed value, its 16-byte authentication tag included.
    ciphertext    BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    -- SPIFFE URI of the operator who last set it.
    updated_by    TEXT NOT NULL,
    -- Also serves listing by app, and by app and env, in name order.
    PRIMARY KEY (app, env, name)
);
