-- Rollouts learn three words and a request (postgres). Kept equivalent to
-- migrations/sqlite/0009_rollout_cancel_redeploy_restart.sql.
--
-- - kinds `redeploy` (the current release again, containers recreated) and
--   `restart` (the current containers restarted in place);
-- - status `cancelled` (stopped on request; hosts possibly changed went
--   back to the previous release);
-- - who asked to cancel a running rollout, and when: the driver, on
--   whichever coordinator holds the lease, sees it between steps.
ALTER TABLE rollouts DROP CONSTRAINT rollouts_kind_check;
ALTER TABLE rollouts ADD CONSTRAINT rollouts_kind_check
    CHECK (kind IN ('deploy', 'rollback', 'redeploy', 'restart'));
ALTER TABLE rollouts DROP CONSTRAINT rollouts_status_check;
ALTER TABLE rollouts ADD CONSTRAINT rollouts_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'reverted', 'revert_failed', 'cancelled'));
-- `ferry rollout cancel`: who asked (SPIFFE URI of the operator), when.
ALTER TABLE rollouts ADD COLUMN cancel_requested_by TEXT;
ALTER TABLE rollouts ADD COLUMN cancel_requested_at_ms BIGINT;
