-- The leader of the coordinators sharing a store: a lease that its holder
-- renews on every tick and that expires when it stops (a crashed, frozen
-- or partitioned coordinator), measured on the database server's clock.
-- One row. SQLite stores have one coordinator, which always leads; the
-- table exists there too so that both schemas stay the same.
CREATE TABLE leader_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
INSERT INTO leader_lease (id, holder, expires_at_ms) VALUES (1, '', 0);
