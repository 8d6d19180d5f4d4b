-- Arrays of numbers and booleans are sent as text[] and cast here (`$3::text[]::int[]`):
-- asyncpg knows no binary codec for int[], bool[] or float8[] until it has asked the
-- server, and it asks once per connection, a query that costs ~10 ms of server CPU.
--
-- Wake-ups (NOTIFY) are sent after the writes commit, batched (PostgresStore._announce):
-- a NOTIFY inside a write would serialize every commit on the database's notify lock.
--
-- Every write transaction on a run locks the run's row first (lock_run), then the
-- steps it touches: one lock order, so writers of one run queue up instead of
-- deadlocking, and event ids stay gapless and ordered. Claims never wait: they
-- skip steps and runs another transaction holds (SKIP LOCKED).

-- name: lock_run
SELECT status FROM runs WHERE id = $1 FOR UPDATE;

-- name: insert_run
-- The run and, unless an earlier launch stored it, its snapshot ($6, by its hash $7).
WITH snapshot AS (
    INSERT INTO snapshots (hash, body) VALUES ($7, $6) ON CONFLICT DO NOTHING
)
INSERT INTO runs (
    id, flow, status, band, model, inputs, snapshot_hash, launched_by,
    idempotency_key, request_hash, replay_of, max_parallel, unsettled, created_at, updated_at
) VALUES ($1, $2, 'running', $3, $4, $5, $7, $8, $9, $10, $11, $12, $13, $14, $14)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: insert_steps
INSERT INTO steps (
    run_id, step_id, position, kind, agent, status, waiting_on, dependents, excluded, queued_at
)
SELECT $1, s.step_id, s.position, s.kind, s.agent, 'pending', s.waiting_on,
       (SELECT coalesce(array_agg(d), '{}') FROM json_array_elements_text(s.dependents::json) d),
       s.excluded, $9
FROM unnest($2::text[], $3::text[]::int[], $4::text[], $5::text[]::bool[], $6::text[]::int[], $7::text[], $8::text[]::bool[])
     AS s(step_id, position, kind, agent, waiting_on, dependents, excluded);

-- name: run_by_key
SELECT id, request_hash FROM runs WHERE idempotency_key = $1;

-- name: run_by_id
SELECT id, request_hash FROM runs WHERE id = $1;

-- name: get_run
SELECT id, flow, status, band, model, inputs, launched_by, replay_of, unsettled, report, error,
       created_at, updated_at, finished_at, snapshot_hash, request_hash, last_event
FROM runs WHERE id = $1;

-- name: list_runs
SELECT id, flow, status, band, model, inputs, launched_by, replay_of, unsettled, report, error,
       created_at, updated_at, finished_at, snapshot_hash, request_hash
FROM runs
WHERE ($1::text IS NULL OR flow = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::bool IS NULL OR $3 = EXISTS (
        SELECT 1 FROM steps WHERE run_id = runs.id AND status = 'waiting'))
  AND ($4::float8 IS NULL OR (created_at, id) < ($4, $5::text))
ORDER BY created_at DESC, id DESC
LIMIT $6;

-- name: get_snapshot
SELECT s.body AS snapshot FROM runs r JOIN snapshots s ON s.hash = r.snapshot_hash
WHERE r.id = $1;

-- name: get_steps
SELECT run_id, step_id, kind, position, status, attempts, failures, crashes, input, output,
       fields, data, error, scripted, deadline, started_at, finished_at
FROM steps WHERE run_id = $1 ORDER BY position;

-- name: get_some_steps
SELECT run_id, step_id, kind, position, status, attempts, failures, crashes, input, output,
       fields, data, error, scripted, deadline, started_at, finished_at
FROM steps WHERE run_id = $1 AND step_id = ANY($2::text[]) ORDER BY position;

-- name: lease_owners
SELECT DISTINCT lease_owner FROM steps WHERE status = 'running';

-- name: expire_leases
UPDATE steps SET lease_expires = 0
WHERE (run_id, step_id) IN (
    SELECT run_id, step_id FROM steps WHERE status = 'running' AND lease_owner = $1
    FOR UPDATE SKIP LOCKED
);

-- name: append_events
-- $2..$4 are parallel arrays (step, event, payload); ids continue the run's counter.
WITH counter AS (
    UPDATE runs SET last_event = last_event + cardinality($3::text[]), updated_at = $5
    WHERE id = $1 RETURNING last_event
)
INSERT INTO events (run_id, id, step_id, event, payload, at)
SELECT $1, counter.last_event - cardinality($3::text[]) + e.n, e.step_id, e.event, e.payload, $5
FROM counter, unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY
     AS e(step_id, event, payload, n);

-- name: finish_write
-- The last run's events ($4..$7, as append_events) and the commit receipt, in one round
-- trip before COMMIT. The write holds the receipt's advisory lock ($9) until it ends:
-- see receipt_lock.
WITH counter AS (
    UPDATE runs SET last_event = last_event + cardinality($6::text[]), updated_at = $8
    WHERE id = $4 RETURNING last_event
), appended AS (
    INSERT INTO events (run_id, id, step_id, event, payload, at)
    SELECT $4, counter.last_event - cardinality($6::text[]) + e.n, e.step_id, e.event,
           e.payload, $8
    FROM counter, unnest($5::text[], $6::text[], $7::text[]) WITH ORDINALITY
         AS e(step_id, event, payload, n)
), receipt AS (
    INSERT INTO commits (token, result, at) VALUES ($1, $2, $3)
)
SELECT pg_advisory_xact_lock($9);

-- name: announce
SELECT count(pg_notify(channel, run_id))
FROM unnest($1::text[], $2::text[]) AS changed(channel, run_id);

-- name: notify_live
SELECT count(pg_notify($1, payload)) FROM unnest($2::text[]) AS live(payload);

-- name: receipt_lock
-- Wait until the write that holds this receipt's lock has ended (committed or not),
-- so that the receipt read next is the final word.
SELECT pg_advisory_lock($1);

-- name: receipt
SELECT result FROM commits WHERE token = $1;

-- name: receipt_unlock
SELECT pg_advisory_unlock($1);

-- name: prune_receipts
DELETE FROM commits WHERE at < $1;

-- name: events
SELECT run_id, id, step_id, event, payload, at FROM events
WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3;

-- name: claim_probe
-- What a claim could take: ready steps, steps whose lease expired. One round trip, no
-- transaction, no locks.
-- (steps_ready leads with `agent`: one range per kind.)
SELECT EXISTS (
    SELECT 1 FROM steps s JOIN runs r ON r.id = s.run_id
    WHERE s.agent AND s.status = 'pending' AND s.waiting_on = 0 AND s.ready_at <= $1
      AND r.status = 'running' AND NOT s.excluded AND ($2::text IS NULL OR s.run_id = $2)
) OR EXISTS (
    SELECT 1 FROM steps s JOIN runs r ON r.id = s.run_id
    WHERE NOT s.agent AND s.status = 'pending' AND s.waiting_on = 0 AND s.ready_at <= $1
      AND r.status = 'running' AND NOT s.excluded AND ($2::text IS NULL OR s.run_id = $2)
) AS ready, EXISTS (
    SELECT 1 FROM steps s JOIN runs r ON r.id = s.run_id
    WHERE s.status = 'running' AND s.lease_expires < $1
      AND r.status = 'running' AND ($2::text IS NULL OR s.run_id = $2)
) AS expired;

-- name: claim_ready
-- Lease ready steps in one statement that commits on its own and never waits, within the
-- capacity of agent steps ($3) and of the others ($4), and each run's max_parallel
-- (counted as of the statement's start: concurrent claims may overshoot it by their own
-- takes); append the step_started events, leave the receipt ($7) and hold its lock ($8).
-- The steps: a window of the first ready steps of each kind in the order they joined
-- the queue (`queued_at`), twice the capacity (a range of steps_ready, which leads with
-- `agent`, so neither kind is found by reading past the other). Their runs are locked in
-- the order they have waited, skipping those another transaction holds (another claim
-- took them, or a settlement is in flight), until there is one per step wanted; of their
-- steps the first are chosen, each looked up by its key and taken if still ready. Claims
-- never wait for each other or for a settlement: claims that waited formed convoys in
-- which settlements queued behind claims that queued behind settlements. `contended`
-- says whether runs or steps another transaction held kept the claim short (the store
-- tries again soon). Every lookup is by key, whatever the statistics, so a claim reads
-- its window, not the backlog. Each step comes with its run's record; one row of NULLs
-- when nothing was taken.
WITH first_ready AS (
    (SELECT s.run_id, s.step_id, s.agent, s.queued_at, s.position FROM steps s
     WHERE s.agent AND s.status = 'pending' AND s.waiting_on = 0 AND s.ready_at <= $1
       AND NOT s.excluded AND ($2::text IS NULL OR s.run_id = $2)
     ORDER BY s.queued_at
     LIMIT $3 * 2)
    UNION ALL
    (SELECT s.run_id, s.step_id, s.agent, s.queued_at, s.position FROM steps s
     WHERE NOT s.agent AND s.status = 'pending' AND s.waiting_on = 0 AND s.ready_at <= $1
       AND NOT s.excluded AND ($2::text IS NULL OR s.run_id = $2)
     ORDER BY s.queued_at
     LIMIT $4 * 2)
), wanted AS (  -- each kind's runs, in the order they have waited
    SELECT run_id, agent, min(queued_at) AS since FROM first_ready GROUP BY run_id, agent
), tried AS (  -- locked (never waiting), up to one run per step of the kind wanted
    (SELECT r.*, true AS for_agents
     FROM (SELECT run_id FROM wanted WHERE agent ORDER BY since, run_id) AS w
     CROSS JOIN LATERAL (
         SELECT * FROM runs WHERE id = w.run_id LIMIT 1 FOR UPDATE SKIP LOCKED
     ) AS r
     LIMIT $3)
    UNION ALL
    (SELECT r.*, false AS for_agents
     FROM (SELECT run_id FROM wanted WHERE NOT agent ORDER BY since, run_id) AS w
     CROSS JOIN LATERAL (
         SELECT * FROM runs WHERE id = w.run_id LIMIT 1 FOR UPDATE SKIP LOCKED
     ) AS r
     LIMIT $4)
), locked AS (  -- a run wanted for both kinds is locked twice by this statement: once here
    SELECT DISTINCT ON (id) * FROM tried WHERE status = 'running' ORDER BY id
), busy AS (  -- agent steps running, counted only in runs with a max_parallel
    SELECT l.id AS run_id, b.n
    FROM locked l CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM steps WHERE run_id = l.id AND status = 'running' AND agent
    ) AS b
    WHERE l.max_parallel IS NOT NULL
), ranked AS (
    SELECT f.run_id, f.step_id, f.agent, l.max_parallel, coalesce(b.n, 0) AS busy,
           row_number() OVER (PARTITION BY f.agent ORDER BY f.queued_at, f.position) AS nth,
           row_number() OVER (PARTITION BY f.run_id, f.agent ORDER BY f.queued_at, f.position)
               AS nth_in_run
    FROM first_ready f JOIN locked l ON l.id = f.run_id LEFT JOIN busy b ON b.run_id = f.run_id
), chosen AS (
    SELECT run_id, step_id FROM ranked
    WHERE CASE WHEN agent
               THEN nth <= $3 AND (max_parallel IS NULL OR busy + nth_in_run <= max_parallel)
               ELSE nth <= $4 END
), candidate AS (  -- still ready now that its run is locked (the latest row: FOR UPDATE)
    SELECT s.run_id, s.step_id, s.position
    FROM chosen c CROSS JOIN LATERAL (  -- by key (LIMIT 1 keeps the conditions below out:
                                        -- with them, a planner without statistics read
                                        -- steps_ready for each step)
        SELECT run_id, step_id, position, status, waiting_on, ready_at, excluded
        FROM steps WHERE run_id = c.run_id AND step_id = c.step_id
        LIMIT 1 FOR UPDATE SKIP LOCKED
    ) AS s
    WHERE s.status = 'pending' AND s.waiting_on = 0 AND s.ready_at <= $1 AND NOT s.excluded
), taken AS (
    UPDATE steps
    SET status = 'running', attempts = steps.attempts + 1, lease_owner = $5,
        lease_expires = $6, started_at = coalesce(steps.started_at, $1)
    FROM candidate
    WHERE steps.run_id = candidate.run_id AND steps.step_id = candidate.step_id
    RETURNING steps.run_id, steps.step_id, steps.kind, steps.attempts, steps.failures,
              steps.position
), counted AS (
    SELECT run_id, count(*) AS n FROM taken GROUP BY run_id
), counter AS (
    UPDATE runs SET last_event = last_event + counted.n, updated_at = $1
    FROM counted WHERE runs.id = counted.run_id
    RETURNING runs.id, runs.last_event, counted.n
), logged AS (
    INSERT INTO events (run_id, id, step_id, event, payload, at)
    SELECT t.run_id,
           counter.last_event - counter.n
               + row_number() OVER (PARTITION BY t.run_id ORDER BY t.position),
           t.step_id, 'step_started',
           json_build_object('attempt', t.attempts, 'worker', $5)::text, $1
    FROM taken t JOIN counter ON counter.id = t.run_id
), receipt AS (
    INSERT INTO commits (token, result, at)
    SELECT $7, '"claimed"', $1 WHERE EXISTS (SELECT 1 FROM taken)
), contended AS (  -- fewer runs locked than wanted, or chosen steps no longer there to take
    SELECT (SELECT count(*) FROM tried WHERE for_agents)
               < least($3, (SELECT count(*) FROM wanted WHERE agent))
        OR (SELECT count(*) FROM tried WHERE NOT for_agents)
               < least($4, (SELECT count(*) FROM wanted WHERE NOT agent))
        OR (SELECT count(*) FROM candidate) < (SELECT count(*) FROM chosen) AS contended
)
SELECT c.contended, pg_advisory_xact_lock($8) AS held,
       t.run_id, t.step_id, t.kind, t.attempts, t.failures,
       l.id, l.flow, l.status, l.band, l.model, l.inputs, l.launched_by, l.replay_of,
       l.unsettled, l.report, l.error, l.created_at, $1::float8 AS updated_at, l.finished_at,
       l.snapshot_hash, l.request_hash  -- the run as claimed (a worker need not read it)
FROM contended c
LEFT JOIN (taken t JOIN locked l ON l.id = t.run_id) ON true
ORDER BY t.run_id, t.position;

-- name: leased_to
-- The steps leased to a worker ($1), of one run ($2) or all: what a write whose
-- acknowledgement was lost had claimed for it.
SELECT run_id, step_id, kind, attempts, failures FROM steps
WHERE status = 'running' AND lease_owner = $1 AND ($2::text IS NULL OR run_id = $2)
ORDER BY run_id, position;

-- name: claimable_expired
SELECT s.run_id, s.step_id, s.kind, s.agent, s.status, s.attempts, s.failures, s.crashes,
       s.lease_owner, s.alone_attempt
FROM steps s JOIN runs r ON r.id = s.run_id
WHERE s.status = 'running' AND s.lease_expires < $1
  AND r.status = 'running' AND ($3::text IS NULL OR s.run_id = $3)
ORDER BY s.lease_expires
LIMIT $2
FOR UPDATE OF s SKIP LOCKED;

-- name: lock_claimable_runs
SELECT id, max_parallel FROM runs WHERE id = ANY($1::text[]) AND status = 'running'
ORDER BY id
FOR UPDATE SKIP LOCKED;

-- name: count_crash
UPDATE steps SET crashes = $3 WHERE run_id = $1 AND step_id = $2;

-- name: take_over_step
-- A step lost by its worker, leased to a worker running nothing else.
UPDATE steps
SET status = 'running', attempts = $3, crashes = $4, lease_owner = $5,
    lease_expires = $6, started_at = coalesce(started_at, $7), alone_attempt = $3
WHERE run_id = $1 AND step_id = $2;

-- name: extend_leases
-- Never waits: a step another transaction holds is reported apart (see held_leases). Each
-- step is looked up by its key (LIMIT 1 keeps the conditions out of the lookup: with
-- them, the planner read every running step of every run through steps_leased, in every
-- heartbeat of every worker).
UPDATE steps SET lease_expires = $5
WHERE (run_id, step_id) IN (
    SELECT s.run_id, s.step_id
    FROM unnest($1::text[], $2::text[], $3::text[]::int[]) AS c(run_id, step_id, attempt)
    CROSS JOIN LATERAL (
        SELECT run_id, step_id, attempts, status, lease_owner FROM steps
        WHERE run_id = c.run_id AND step_id = c.step_id
        LIMIT 1 FOR UPDATE SKIP LOCKED
    ) AS s
    WHERE s.status = 'running' AND s.lease_owner = $4 AND s.attempts = c.attempt
)
RETURNING run_id, step_id;

-- name: held_leases
SELECT s.run_id, s.step_id
FROM unnest($1::text[], $2::text[], $3::text[]::int[]) AS c(run_id, step_id, attempt)
CROSS JOIN LATERAL (  -- by key, as in extend_leases
    SELECT run_id, step_id, attempts, status, lease_owner FROM steps
    WHERE run_id = c.run_id AND step_id = c.step_id
    LIMIT 1
) AS s
WHERE s.status = 'running' AND s.lease_owner = $4 AND s.attempts = c.attempt;

-- name: settle_steps
-- Steps' results, settled and recorded in one statement (the hot path of a run): the
-- results that arrived together from one process, of one run or several, as arrays of
-- run ($1), step ($2), lease owner ($3), attempt ($4), status, output, fields, data,
-- input, scripted ($5..$10), event and payload ($15, $16): one commit for all of them.
-- Lock the runs in the order of their ids (the uncorrelated subquery runs first; writers of
-- several runs all lock in that order, so none deadlock); complete or skip each step whose
-- fence (owner, attempt) holds; take from each dependent as many needs as it had among
-- them, leasing at once (to $12, until $13) up to $14 code steps and gates and up to $19
-- agent steps in all (within each run's max_parallel) they make ready; count the steps off
-- their runs; append each run's events in the order given, then its step_started events;
-- leave the receipt ($17, its result "adopt": see PostgresStore._adopt) and hold its lock
-- ($18, see receipt_lock). Record the agent calls given with the results ($20..$26:
-- sequence, persona, prompt, output, backend (NULL: no call), scripted, at), fence or
-- not. A result may carry how its run ends ($27 status, $28 report, $29 error, $30
-- payload): the run, if left with no unsettled step, is finished, with its event last.
-- One row per dependent of each run with a fence that held (or one row of NULLs for the
-- run, as `of_run`), each with the run's unsettled count, `finished`, and `settled`, its
-- steps settled; no row for a run none of whose fences held. A statement that waited for
-- a run's lock reads the steps as they were when it began: only `candidate` (which steps
-- to take at once) can be stale, and only in the safe direction (a step is taken only if
-- its last needs are these); the UPDATEs act on the latest rows.
WITH given AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]::int[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[]::bool[],
                         $15::text[], $16::text[], $20::text[]::int[], $21::text[], $22::text[],
                         $23::text[], $24::text[], $25::text[]::bool[], $26::text[]::float8[],
                         $27::text[], $28::text[], $29::text[], $30::text[])
        WITH ORDINALITY AS g(run_id, step_id, owner, attempt, status, output, fields, data,
                             input, scripted, event, payload, sequence, persona, prompt,
                             reply, backend, call_scripted, called_at, ending, end_report,
                             end_error, end_payload, nth)
), locked AS (  -- one by one in the order of their ids, each by its key
    SELECT r.id
    FROM (SELECT DISTINCT run_id FROM given ORDER BY run_id) AS g CROSS JOIN LATERAL (
        SELECT id FROM runs WHERE id = g.run_id LIMIT 1 FOR UPDATE
    ) AS r
), called AS (
    INSERT INTO agent_calls (
        run_id, step_id, attempt, sequence, persona, prompt, output, backend, scripted, at
    )
    SELECT run_id, step_id, attempt, sequence, persona, prompt, reply, backend,
           call_scripted, called_at
    FROM given WHERE backend IS NOT NULL
    ON CONFLICT (run_id, step_id, attempt, sequence) DO UPDATE
    SET persona = excluded.persona, prompt = excluded.prompt, output = excluded.output,
        backend = excluded.backend, scripted = excluded.scripted, at = excluded.at
), fenced AS (  -- each step by its key, locked (so its latest row), if its fence holds:
                -- a fence in the UPDATE below let the planner reach the steps through
                -- steps_leased, reading every running step (and every dead index entry
                -- until a vacuum) in each settlement
    SELECT g.*
    FROM given g CROSS JOIN LATERAL (
        SELECT status, lease_owner, attempts FROM steps
        WHERE run_id = g.run_id AND step_id = g.step_id
        LIMIT 1 FOR UPDATE
    ) AS s
    WHERE (SELECT count(*) FROM locked) > 0  -- the runs' locks first
      AND s.status = 'running' AND s.lease_owner = g.owner AND s.attempts = g.attempt
), done AS (  -- rows this statement holds: a key is all the UPDATE needs
    UPDATE steps
    SET status = g.status, output = g.output, fields = g.fields, data = g.data,
        input = coalesce(g.input, steps.input), scripted = g.scripted, error = NULL,
        lease_owner = NULL, lease_expires = NULL, finished_at = $11
    FROM fenced g
    WHERE steps.run_id = g.run_id AND steps.step_id = g.step_id
    RETURNING steps.run_id, steps.step_id, steps.dependents, g.nth, g.event, g.payload
), needs AS (
    SELECT done.run_id, d.step_id, count(*)::int AS n
    FROM done CROSS JOIN LATERAL unnest(done.dependents) AS d(step_id)
    GROUP BY done.run_id, d.step_id
), candidate AS (
    SELECT needs.run_id, s.step_id, s.position, s.agent, needs.n,
           (s.waiting_on = needs.n AND s.status = 'pending'
            AND NOT s.excluded AND s.ready_at <= $11) AS ready
    FROM needs CROSS JOIN LATERAL (
        SELECT step_id, position, waiting_on, status, agent, excluded, ready_at
        FROM steps WHERE run_id = needs.run_id AND step_id = needs.step_id
        LIMIT 1  -- keeps the lookup per dependent (not flattened into a run-wide join)
    ) AS s
), room AS (  -- agent steps each run may take: within its max_parallel less those running
              -- (counted only for a run that has one and a candidate agent step ready)
    SELECT runs.id AS run_id,
           CASE WHEN max_parallel IS NULL THEN $19
                ELSE max_parallel - (
                    SELECT count(*) FROM steps
                    WHERE run_id = runs.id AND status = 'running' AND agent
                      AND step_id NOT IN (SELECT step_id FROM done WHERE run_id = runs.id))
           END AS n
    FROM runs WHERE id IN (SELECT run_id FROM candidate WHERE ready AND agent)
), chosen AS (
    (SELECT run_id, step_id FROM candidate WHERE ready AND NOT agent
     ORDER BY run_id, position LIMIT $14)
    UNION ALL
    (SELECT run_id, step_id FROM (
        SELECT run_id, step_id, row_number() OVER (ORDER BY run_id, position) AS nth
        FROM (
            SELECT c.run_id, c.step_id, c.position, room.n AS room,
                   row_number() OVER (PARTITION BY c.run_id ORDER BY c.position) AS in_run
            FROM candidate c JOIN room ON room.run_id = c.run_id
            WHERE c.ready AND c.agent
        ) AS a
        WHERE in_run <= room
     ) AS b
     WHERE nth <= $19)
), decided AS (
    SELECT candidate.*, chosen.step_id IS NOT NULL AS taken
    FROM candidate LEFT JOIN chosen
         ON chosen.run_id = candidate.run_id AND chosen.step_id = candidate.step_id
), dependent AS (
    UPDATE steps
    SET waiting_on = steps.waiting_on - d.n,
        queued_at = CASE WHEN steps.waiting_on = d.n THEN $11 ELSE steps.queued_at END,
        status = CASE WHEN d.taken THEN 'running' ELSE steps.status END,
        attempts = steps.attempts + d.taken::int,
        lease_owner = CASE WHEN d.taken THEN $12 ELSE steps.lease_owner END,
        lease_expires = CASE WHEN d.taken THEN $13 ELSE steps.lease_expires END,
        started_at = CASE WHEN d.taken THEN coalesce(steps.started_at, $11)
                          ELSE steps.started_at END
    FROM decided d
    WHERE steps.run_id = d.run_id AND steps.step_id = d.step_id
    RETURNING steps.run_id, steps.step_id, steps.position, steps.waiting_on, steps.excluded,
              steps.status, steps.dependents, steps.kind, steps.attempts, steps.failures,
              d.taken
), settled AS (
    SELECT run_id, count(*) AS n, array_agg(step_id) AS ids FROM done GROUP BY run_id
), taken AS (
    SELECT run_id, count(*) AS n FROM dependent WHERE taken GROUP BY run_id
), ending AS (  -- how a run ends, if it does: the first given
    SELECT DISTINCT ON (run_id) run_id, ending, end_report, end_error, end_payload
    FROM given WHERE ending IS NOT NULL ORDER BY run_id, nth
), run AS (  -- ends when told how and the run's latest row has only these unsettled
    UPDATE runs
    SET unsettled = unsettled - s.n, updated_at = $11,
        last_event = last_event + s.n + coalesce(t.n, 0)
                     + (e.ending IS NOT NULL AND unsettled = s.n)::int,
        status = CASE WHEN e.ending IS NOT NULL AND unsettled = s.n THEN e.ending
                      ELSE status END,
        report = CASE WHEN e.ending IS NOT NULL AND unsettled = s.n THEN e.end_report
                      ELSE report END,
        error = CASE WHEN e.ending IS NOT NULL AND unsettled = s.n THEN e.end_error
                     ELSE error END,
        finished_at = CASE WHEN e.ending IS NOT NULL AND unsettled = s.n THEN $11
                           ELSE finished_at END
    FROM settled s LEFT JOIN taken t ON t.run_id = s.run_id
         LEFT JOIN ending e ON e.run_id = s.run_id
    WHERE runs.id = s.run_id
    RETURNING runs.id AS run_id, unsettled, last_event, s.n AS settled, coalesce(t.n, 0) AS taken,
              (e.ending IS NOT NULL AND unsettled = 0) AS finished,
              e.ending, e.end_payload
), logged AS (
    INSERT INTO events (run_id, id, step_id, event, payload, at)
    SELECT done.run_id,
           run.last_event - run.finished::int - run.taken - run.settled
               + row_number() OVER (PARTITION BY done.run_id ORDER BY done.nth),
           done.step_id, done.event, done.payload, $11
    FROM done JOIN run ON run.run_id = done.run_id
    UNION ALL
    SELECT d.run_id, run.last_event - run.finished::int - run.taken
               + row_number() OVER (PARTITION BY d.run_id ORDER BY d.position),
           d.step_id, 'step_started',
           json_build_object('attempt', d.attempts, 'worker', $12)::text, $11
    FROM dependent d JOIN run ON run.run_id = d.run_id WHERE d.taken
    UNION ALL
    SELECT run_id, last_event, NULL, 'run_' || ending, end_payload, $11
    FROM run WHERE finished
), receipt AS (
    INSERT INTO commits (token, result, at)
    SELECT $17, '"adopt"', $11 WHERE EXISTS (SELECT 1 FROM run)
)
SELECT run.run_id AS of_run, run.unsettled, run.finished, settled.ids AS settled,
       pg_advisory_xact_lock($18) AS held, dependent.*
FROM run JOIN settled ON settled.run_id = run.run_id
     LEFT JOIN dependent ON dependent.run_id = run.run_id;

-- name: settled_attempts
-- Which of these steps ($1 run, $2 step) are settled at these attempts ($3): after a lost
-- acknowledgement, which results of a batch settlement were recorded.
SELECT s.run_id, s.step_id FROM steps s
JOIN unnest($1::text[], $2::text[], $3::text[]::int[]) AS g(run_id, step_id, attempt)
     ON g.run_id = s.run_id AND g.step_id = s.step_id
WHERE s.attempts = g.attempt AND s.status IN ('completed', 'skipped');

-- name: retry_step
UPDATE steps
SET status = 'pending', ready_at = $5, queued_at = $5, failures = failures + 1, error = $6,
    lease_owner = NULL, lease_expires = NULL
WHERE run_id = $1 AND step_id = $2 AND status = 'running'
  AND lease_owner = $3 AND attempts = $4;

-- name: fail_step
UPDATE steps
SET status = 'failed', failures = failures + 1, error = $6,
    lease_owner = NULL, lease_expires = NULL, finished_at = $7
WHERE run_id = $1 AND step_id = $2 AND status = $5
  AND coalesce(lease_owner, '') = coalesce($3, '') AND attempts = $4;

-- name: release_step
UPDATE steps
SET status = 'pending', attempts = attempts - 1, lease_owner = NULL, lease_expires = NULL
WHERE run_id = $1 AND step_id = $2 AND status = 'running'
  AND lease_owner = $3 AND attempts = $4;

-- name: wait_step
UPDATE steps
SET status = 'waiting', input = $5, deadline = $6, lease_owner = NULL, lease_expires = NULL
WHERE run_id = $1 AND step_id = $2 AND status = 'running'
  AND lease_owner = $3 AND attempts = $4;

-- name: decide_complete
UPDATE steps
SET status = 'completed', output = $3, data = $4, fields = '{}', finished_at = $5
WHERE run_id = $1 AND step_id = $2 AND status = 'waiting'
RETURNING dependents;

-- name: decide_fail
UPDATE steps
SET status = 'failed', output = $3, data = $4, fields = '{}', error = $6, finished_at = $5
WHERE run_id = $1 AND step_id = $2 AND status = 'waiting';

-- name: step_status
SELECT status FROM steps WHERE run_id = $1 AND step_id = $2;

-- name: settle
-- $2 steps of the run settled; their dependents ($3) wait on one need fewer each (a
-- step named n times, needed by n steps that settled together, waits on n fewer).
-- One row per dependent, or one row of NULLs when there is none; every row carries
-- the run's unsettled count.
WITH run AS (
    UPDATE runs SET unsettled = unsettled - $2, updated_at = $4 WHERE id = $1
    RETURNING unsettled
), dependent AS (
    UPDATE steps SET waiting_on = waiting_on - settled.n,
        queued_at = CASE WHEN waiting_on = settled.n THEN $4 ELSE queued_at END
    FROM (SELECT step_id, count(*) AS n FROM unnest($3::text[]) AS step_id GROUP BY step_id)
         AS settled
    WHERE steps.run_id = $1 AND steps.step_id = settled.step_id
    RETURNING steps.step_id, steps.position, steps.waiting_on, steps.excluded, steps.status,
              steps.dependents
)
SELECT run.unsettled, dependent.* FROM run LEFT JOIN dependent ON true;

-- name: exclude_step
UPDATE steps SET status = 'excluded', output = '', fields = '{}', data = NULL, finished_at = $3
WHERE run_id = $1 AND step_id = $2 AND status = 'pending';

-- name: reached_excluded
SELECT step_id, dependents FROM steps
WHERE run_id = $1 AND status = 'pending' AND excluded AND waiting_on = 0
ORDER BY position;

-- name: live_steps
SELECT step_id FROM steps
WHERE run_id = $1 AND status IN ('pending', 'running', 'waiting') ORDER BY position;

-- name: cancel_live_steps
UPDATE steps
SET status = 'cancelled', lease_owner = NULL, lease_expires = NULL, finished_at = $2
WHERE run_id = $1 AND status IN ('pending', 'running', 'waiting');

-- name: end_run
UPDATE runs SET status = $2, error = $3, report = NULL, finished_at = $4, updated_at = $4
WHERE id = $1 AND status = 'running';

-- name: finish_run
-- Mark a running run whose steps have all settled as finished, with its event, in one
-- statement that commits on its own (run again after a lost acknowledgement, it changes
-- nothing: the run is no longer running).
WITH finished AS (
    UPDATE runs
    SET status = $2, error = $3, report = $4, finished_at = $5, updated_at = $5,
        last_event = last_event + 1
    WHERE id = $1 AND status = 'running' AND unsettled = 0
    RETURNING last_event
), logged AS (
    INSERT INTO events (run_id, id, step_id, event, payload, at)
    SELECT $1, last_event, NULL, 'run_' || $2, $6, $5 FROM finished
)
SELECT count(*) FROM finished;

-- name: reopen_run
UPDATE runs SET status = 'running', error = NULL, report = NULL, finished_at = NULL,
    unsettled = $2, updated_at = $3
WHERE id = $1 AND status IN ('failed', 'cancelled');

-- name: reset_steps
UPDATE steps
SET status = 'pending', waiting_on = r.waiting_on, failures = 0, crashes = 0, ready_at = 0,
    queued_at = $4, lease_owner = NULL, lease_expires = NULL, deadline = NULL, error = NULL,
    output = NULL, fields = NULL, data = NULL, finished_at = NULL
FROM unnest($2::text[], $3::text[]::int[]) AS r(step_id, waiting_on)
WHERE steps.run_id = $1 AND steps.step_id = r.step_id;

-- name: analyze_steps
ANALYZE steps;

-- name: unsettled
SELECT unsettled FROM runs WHERE id = $1;

-- name: stranded_excluded
SELECT DISTINCT s.run_id FROM steps s JOIN runs r ON r.id = s.run_id
WHERE s.status = 'pending' AND s.waiting_on = 0 AND s.excluded AND r.status = 'running';

-- name: runs_to_finish
SELECT id FROM runs WHERE status = 'running' AND unsettled = 0 ORDER BY created_at;

-- name: waiting_steps
SELECT step_id FROM steps WHERE status = 'waiting' AND run_id = $1 ORDER BY position;

-- name: expired_gates
SELECT run_id, step_id FROM steps WHERE status = 'waiting' AND deadline <= $1
ORDER BY deadline;

-- name: has_work
SELECT EXISTS (
    SELECT 1 FROM steps s JOIN runs r ON r.id = s.run_id
    WHERE s.status IN ('pending', 'running') AND (s.status = 'running' OR s.waiting_on = 0)
      AND r.status = 'running' AND ($1::text IS NULL OR r.id = $1)
) OR EXISTS (
    SELECT 1 FROM runs
    WHERE status = 'running' AND unsettled = 0 AND ($1::text IS NULL OR id = $1)
);

-- name: record_agent_call
INSERT INTO agent_calls (
    run_id, step_id, attempt, sequence, persona, prompt, output, backend, scripted, at
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (run_id, step_id, attempt, sequence) DO UPDATE
SET persona = excluded.persona, prompt = excluded.prompt, output = excluded.output,
    backend = excluded.backend, scripted = excluded.scripted, at = excluded.at;

-- name: agent_calls
SELECT run_id, step_id, attempt, sequence, persona, prompt, output, backend, scripted, at
FROM agent_calls WHERE run_id = $1 AND ($2::text IS NULL OR step_id = $2)
ORDER BY step_id, attempt, sequence;
