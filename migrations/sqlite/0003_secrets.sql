-- Secrets per (app, env) (SQLite). Kept equivalent to
-- migrations/postgres/0003_secrets.sql: same tables, columns, constraints
-- and indexes. The store only ever holds ciphertext: the coordinator seals
-- each value with XChaCha20-Poly1305 under its secrets key before writing
-- it, with "app\0env\0name" as associated data, so a row's ciphertext
-- cannot be moved to another secret.

CREATE TABLE secrets (
    app           TEXT NOT NULL,
    env           TEXT NOT NULL,
    -- An environment variable name, as the deploy job sets it.
    name          TEXT NOT NULL,
    -- The random 24-byte nonce this value was sealed with.
    nonce         BLOB NOT NULL,
    -- The sealed value, its 16-byte authentication tag included.
    ciphertext    BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    -- SPIFFE URI of the operator who last set it.
    updated_by    TEXT NOT NULL,
    -- Also serves listing by app, and by app and env, in name order.
    PRIMARY KEY (app, env, name)
);
