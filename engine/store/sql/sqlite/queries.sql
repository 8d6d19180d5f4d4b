-- name: insert_snapshot
INSERT INTO snapshots (hash, body) VALUES (:hash, :body) ON CONFLICT DO NOTHING;

-- name: insert_run
INSERT INTO runs (
    id, flow, status, band, model, inputs, snapshot_hash, launched_by,
    idempotency_key, request_hash, replay_of, max_parallel, unsettled, created_at, updated_at
) VALUES (
    :id, :flow, 'running', :band, :model, :inputs, :snapshot_hash, :launched_by,
    :idempotency_key, :request_hash, :replay_of, :max_parallel, :unsettled, :now, :now
);

-- name: insert_step
INSERT INTO steps (
    run_id, step_id, position, kind, agent, status, waiting_on, dependents, excluded, queued_at
) VALUES (
    :run_id, :step_id, :position, :kind, :agent, :status, :waiting_on, :dependents, :excluded,
    :now
);

-- name: run_by_key
SELECT id, request_hash FROM runs WHERE idempotency_key = :key;

-- name: get_run
SELECT id, flow, status, band, model, inputs, launched_by, replay_of, unsettled, report, error,
       created_at, updated_at, finished_at, snapshot_hash, request_hash, last_event
FROM runs WHERE id = :id;

-- name: get_snapshot
SELECT s.body AS snapshot FROM runs r JOIN snapshots s ON s.hash = r.snapshot_hash
WHERE r.id = :id;

-- name: get_steps
SELECT run_id, step_id, kind, position, status, attempts, failures, crashes, input, output,
       fields, data, error, scripted, deadline, started_at, finished_at
FROM steps WHERE run_id = :run_id ORDER BY position;

-- name: get_some_steps
SELECT run_id, step_id, kind, position, status, attempts, failures, crashes, input, output,
       fields, data, error, scripted, deadline, started_at, finished_at
FROM steps WHERE run_id = ? AND step_id IN ({ids}) ORDER BY position;

-- name: lease_owners
SELECT DISTINCT lease_owner FROM steps WHERE status = 'running';

-- name: expire_leases
UPDATE steps SET lease_expires = 0 WHERE status = 'running' AND lease_owner = :owner;

-- name: next_event_ids
UPDATE runs SET last_event = last_event + :count, updated_at = :now WHERE id = :run_id
RETURNING last_event;

-- name: insert_event
INSERT INTO events (run_id, id, step_id, event, payload, at)
VALUES (:run_id, :id, :step_id, :event, :payload, :at);

-- name: events
SELECT run_id, id, step_id, event, payload, at FROM events
WHERE run_id = :run_id AND id > :after ORDER BY id LIMIT :limit;

-- name: claimable_ready
-- Steps drive the join (CROSS JOIN fixes the order) so the partial index on ready
-- steps is used and a claim costs O(limit), however many steps the runs have.
SELECT s.run_id, s.step_id, s.kind, s.agent, s.status, s.attempts, s.failures, s.crashes,
       s.lease_owner, r.max_parallel
FROM steps s CROSS JOIN runs r
WHERE s.status = 'pending' AND s.waiting_on = 0 AND s.ready_at <= :now
  AND r.id = s.run_id AND r.status = 'running'
  AND s.excluded = 0 AND (:run_id IS NULL OR s.run_id = :run_id)
ORDER BY s.queued_at, s.rowid
LIMIT :limit;

-- name: claimable_expired
SELECT s.run_id, s.step_id, s.kind, s.agent, s.status, s.attempts, s.failures, s.crashes,
       s.lease_owner, r.max_parallel, s.alone_attempt
FROM steps s CROSS JOIN runs r
WHERE s.status = 'running' AND s.lease_expires < :now
  AND r.id = s.run_id AND r.status = 'running'
  AND (:run_id IS NULL OR s.run_id = :run_id)
ORDER BY s.lease_expires
LIMIT :limit;

-- name: claimable_step
SELECT s.run_id, s.step_id, s.kind, s.agent, s.status, s.attempts, s.failures, s.crashes,
       s.lease_owner, r.max_parallel
FROM steps s CROSS JOIN runs r
WHERE s.run_id = :run_id AND s.step_id = :step_id AND s.status = 'pending'
  AND s.waiting_on = 0 AND s.ready_at <= :now AND s.excluded = 0
  AND r.id = s.run_id AND r.status = 'running';

-- name: run_status
SELECT status FROM runs WHERE id = :run_id;

-- name: running_agents
SELECT count(*) FROM steps WHERE run_id = :run_id AND status = 'running' AND agent = 1;

-- name: take_step
UPDATE steps
SET status = 'running', attempts = :attempt, crashes = :crashes, lease_owner = :worker,
    lease_expires = :expires, started_at = coalesce(started_at, :now),
    alone_attempt = CASE WHEN :alone THEN :attempt ELSE alone_attempt END
WHERE run_id = :run_id AND step_id = :step_id;

-- name: extend_lease
UPDATE steps SET lease_expires = :expires
WHERE run_id = :run_id AND step_id = :step_id AND status = 'running'
  AND lease_owner = :worker AND attempts = :attempt;

-- name: complete_step
UPDATE steps
SET status = 'completed', output = :output, fields = :fields, data = :data,
    input = coalesce(:input, input), scripted = :scripted, error = NULL,
    lease_owner = NULL, lease_expires = NULL, finished_at = :now
WHERE run_id = :run_id AND step_id = :step_id AND status = 'running'
  AND lease_owner = :worker AND attempts = :attempt
RETURNING dependents;

-- name: skip_step
UPDATE steps
SET status = 'skipped', output = '', fields = '{}', data = NULL, error = NULL,
    lease_owner = NULL, lease_expires = NULL, finished_at = :now
WHERE run_id = :run_id AND step_id = :step_id AND status = 'running'
  AND lease_owner = :worker AND attempts = :attempt
RETURNING dependents;

-- name: retry_step
UPDATE steps
SET status = 'pending', ready_at = :ready_at, queued_at = :ready_at, failures = failures + 1,
    error = :error, lease_owner = NULL, lease_expires = NULL
WHERE run_id = :run_id AND step_id = :step_id AND status = 'running'
  AND lease_owner = :worker AND attempts = :attempt;

-- name: fail_step
UPDATE steps
SET status = 'failed', failures = failures + 1, error = :error,
    lease_owner = NULL, lease_expires = NULL, finished_at = :now
WHERE run_id = :run_id AND step_id = :step_id AND status = :status
  AND coalesce(lease_owner, '') = coalesce(:worker, '') AND attempts = :attempt;

-- name: release_step
UPDATE steps
SET status = 'pending', attempts = attempts - 1, lease_owner = NULL, lease_expires = NULL
WHERE run_id = :run_id AND step_id = :step_id AND status = 'running'
  AND lease_owner = :worker AND attempts = :attempt;

-- name: wait_step
UPDATE steps
SET status = 'waiting', input = :message, deadline = :deadline,
    lease_owner = NULL, lease_expires = NULL
WHERE run_id = :run_id AND step_id = :step_id AND status = 'running'
  AND lease_owner = :worker AND attempts = :attempt;

-- name: decide_complete
UPDATE steps
SET status = 'completed', output = :output, data = :data, fields = '{}', finished_at = :now
WHERE run_id = :run_id AND step_id = :step_id AND status = 'waiting'
RETURNING dependents;

-- name: decide_fail
UPDATE steps
SET status = 'failed', output = :output, data = :data, fields = '{}', error = :error,
    finished_at = :now
WHERE run_id = :run_id AND step_id = :step_id AND status = 'waiting';

-- name: step_status
SELECT status FROM steps WHERE run_id = :run_id AND step_id = :step_id;

-- name: settle_dependent
UPDATE steps
SET waiting_on = waiting_on - 1,
    queued_at = CASE WHEN waiting_on = 1 THEN :now ELSE queued_at END
WHERE run_id = :run_id AND step_id = :step_id
RETURNING waiting_on, excluded, status, dependents;

-- name: exclude_step
UPDATE steps SET status = 'excluded', output = '', fields = '{}', data = NULL, finished_at = :now
WHERE run_id = :run_id AND step_id = :step_id AND status = 'pending';

-- name: reached_excluded
SELECT step_id, dependents FROM steps
WHERE run_id = :run_id AND status = 'pending' AND excluded = 1 AND waiting_on = 0
ORDER BY position;

-- name: settle_run
UPDATE runs SET unsettled = unsettled - 1, updated_at = :now WHERE id = :run_id
RETURNING unsettled;

-- name: live_steps
SELECT step_id FROM steps
WHERE run_id = :run_id AND status IN ('pending', 'running', 'waiting') ORDER BY position;

-- name: cancel_live_steps
UPDATE steps
SET status = 'cancelled', lease_owner = NULL, lease_expires = NULL, finished_at = :now
WHERE run_id = :run_id AND status IN ('pending', 'running', 'waiting');

-- name: end_run
UPDATE runs SET status = :status, error = :error, report = :report, finished_at = :now,
    updated_at = :now
WHERE id = :run_id AND status = 'running';

-- name: finish_run
UPDATE runs SET status = :status, error = :error, report = :report, finished_at = :now,
    updated_at = :now
WHERE id = :run_id AND status = 'running' AND unsettled = 0;

-- name: reopen_run
UPDATE runs SET status = 'running', error = NULL, report = NULL, finished_at = NULL,
    unsettled = :unsettled, updated_at = :now
WHERE id = :run_id AND status IN ('failed', 'cancelled');

-- name: reset_step
UPDATE steps
SET status = 'pending', waiting_on = :waiting_on, failures = 0, crashes = 0, ready_at = 0,
    queued_at = :now, lease_owner = NULL, lease_expires = NULL, deadline = NULL, error = NULL,
    output = NULL, fields = NULL, data = NULL, finished_at = NULL
WHERE run_id = :run_id AND step_id = :step_id;

-- name: runs_to_finish
SELECT id FROM runs WHERE status = 'running' AND unsettled = 0 ORDER BY created_at;

-- name: waiting_steps
-- Through the small index of waiting steps (steps_gates), not every step of the run.
SELECT step_id FROM steps INDEXED BY steps_gates
WHERE status = 'waiting' AND run_id = :run_id ORDER BY position;

-- name: expired_gates
SELECT run_id, step_id FROM steps WHERE status = 'waiting' AND deadline <= :now
ORDER BY deadline;

-- name: has_work
SELECT EXISTS (
    SELECT 1 FROM steps s CROSS JOIN runs r
    WHERE s.status = 'pending' AND s.waiting_on = 0
      AND r.id = s.run_id AND r.status = 'running' AND (:run_id IS NULL OR r.id = :run_id)
) OR EXISTS (
    SELECT 1 FROM steps s CROSS JOIN runs r
    WHERE s.status = 'running'
      AND r.id = s.run_id AND r.status = 'running' AND (:run_id IS NULL OR r.id = :run_id)
) OR EXISTS (
    SELECT 1 FROM runs
    WHERE status = 'running' AND unsettled = 0 AND (:run_id IS NULL OR id = :run_id)
);

-- name: record_agent_call
INSERT OR REPLACE INTO agent_calls (
    run_id, step_id, attempt, sequence, persona, prompt, output, backend, scripted, at
) VALUES (
    :run_id, :step_id, :attempt, :sequence, :persona, :prompt, :output, :backend, :scripted, :at
);

-- name: agent_calls
SELECT run_id, step_id, attempt, sequence, persona, prompt, output, backend, scripted, at
FROM agent_calls WHERE run_id = :run_id AND (:step_id IS NULL OR step_id = :step_id)
ORDER BY step_id, attempt, sequence;
