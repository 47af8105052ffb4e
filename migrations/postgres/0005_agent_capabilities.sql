-- What each agent said it can do in its last Hello (`capabilities`), as a
-- JSON array of strings; replaced on every connect.
ALTER TABLE agents ADD COLUMN capabilities_json TEXT NOT NULL DEFAULT '[]';
