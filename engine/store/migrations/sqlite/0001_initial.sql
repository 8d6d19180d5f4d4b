-- Runs, their steps, agent calls and the append-only event log.
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    band TEXT,
    model TEXT NOT NULL,
    inputs TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    snapshot_hash TEXT NOT NULL,
    launched_by TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    replay_of TEXT,
    max_parallel INTEGER,
    unsettled INTEGER NOT NULL,
    last_event INTEGER NOT NULL DEFAULT 0,
    report TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';

CREATE TABLE steps (
    run_id TEXT NOT NULL REFERENCES runs (id),
    step_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL,
    agent INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN (
        'pending', 'running', 'waiting', 'completed', 'skipped', 'excluded', 'failed', 'cancelled'
    )),
    waiting_on INTEGER NOT NULL,
    dependents TEXT NOT NULL,
    excluded INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    ready_at REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    deadline REAL,
    input TEXT,
    output TEXT,
    fields TEXT,
    data TEXT,
    error TEXT,
    scripted INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX steps_ready ON steps (ready_at) WHERE status = 'pending' AND waiting_on = 0;
CREATE INDEX steps_leased ON steps (lease_expires) WHERE status = 'running';
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
    scripted INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (run_id, step_id, attempt, sequence)
);

CREATE TABLE events (
    run_id TEXT NOT NULL REFERENCES runs (id),
    id INTEGER NOT NULL,
    step_id TEXT,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (run_id, id)
);
