-- The certificate an agent's renewal replaced, and when: the coordinator
-- accepts only the current one, and the previous one for a short overlap
-- after a renewal (the agent reconnects with the new one at once).
ALTER TABLE agents ADD COLUMN previous_cert_serial TEXT;
ALTER TABLE agents ADD COLUMN cert_renewed_at_ms BIGINT;
