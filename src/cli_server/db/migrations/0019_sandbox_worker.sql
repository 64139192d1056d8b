-- The replica whose background task is taking the sandbox through creating, resuming or
-- pausing: the leader's reconciler and idle monitor leave it alone while that replica is live,
-- and repair it once the replica's heartbeat has expired (it died mid-transition).
ALTER TABLE sandboxes ADD COLUMN worked_by text;
