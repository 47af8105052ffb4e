-- A second step, so that ordering and "already applied" are exercised.
ALTER TABLE visits ADD COLUMN user_agent text;
CREATE INDEX visits_visited_at ON visits (visited_at);
