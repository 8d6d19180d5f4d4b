-- Ready steps are claimed in the order they joined the queue (`queued_at`): a step made
-- ready by a launch or a settlement at that moment, a retried step when its delay ends.
-- Claims ordered by `ready_at`, which is 0 for the first and the retry time for the
-- second, so under a backlog that never emptied a retried step waited behind every step
-- made ready after it. `ready_at` still says when a step may be claimed.
ALTER TABLE steps ADD COLUMN queued_at DOUBLE PRECISION NOT NULL DEFAULT 0;
UPDATE steps SET queued_at = ready_at WHERE status = 'pending';
DROP INDEX steps_ready;
CREATE INDEX steps_ready ON steps (agent, queued_at) WHERE status = 'pending' AND waiting_on = 0;
