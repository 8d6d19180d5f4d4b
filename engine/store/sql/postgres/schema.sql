-- The schema every migration together produces (checked by tests/store/test_postgres_schema.py).
CREATE TABLE schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE snapshots (
    hash TEXT PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    band TEXT,
    model TEXT NOT NULL,
    inputs TEXT NOT NULL,
    snapshot_hash TEXT NOT NULL,
    launched_by TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    replay_of TEXT,
    max_parallel INTEGER,
    unsettled INTEGER NOT NULL,
    last_event BIGINT NOT NULL DEFAULT 0,
    report TEXT,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';

CREATE TABLE steps (
    run_id TEXT NOT NULL REFERENCES runs (id),
    step_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL,
    agent BOOLEAN NOT NULL,
    status TEXT NOT NULL CHECK (status IN (
        'pending', 'running', 'waiting', 'completed', 'skipped', 'excluded', 'failed', 'cancelled'
    )),
    waiting_on INTEGER NOT NULL,
    dependents TEXT[] NOT NULL,
    excluded BOOLEAN NOT NULL DEFAULT false,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    ready_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires DOUBLE PRECISION,
    deadline DOUBLE PRECISION,
    input TEXT,
    output TEXT,
    fields TEXT,
    data TEXT,
    error TEXT,
    scripted BOOLEAN NOT NULL DEFAULT false,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    queued_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    alone_attempt INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX steps_ready ON steps (agent, queued_at) WHERE status = 'pending' AND waiting_on = 0;
CREATE INDEX steps_leased ON steps (lease_expires) WHERE status = 'running';
CREATE INDEX steps_running_agents ON steps (run_id) WHERE status = 'running' AND agent;
CREATE INDEX steps_gates ON steps (deadline) WHERE status = 'waiting';

CREATE TABLE agent_calls (
    run_id TEXT NOT NULL REFERENCES runs (id),
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    persona TEXT,
    prompt TEXT NOT NULL,
    output TEXT NOT NULL,
    backend TEXT NOT NULL,
    scripted BOOLEAN NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, step_id, attempt, sequence)
);

CREATE TABLE events (
    run_id TEXT NOT NULL REFERENCES runs (id),
    id BIGINT NOT NULL,
    step_id TEXT,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, id)
);

-- One row per committed write, written in the write's own transaction: when the
-- connection drops while COMMIT is in flight, the retry looks its token up here to
-- learn whether (and with what result) the write committed. Old rows are pruned.
CREATE TABLE commits (
    token TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX commits_by_age ON commits (at);
