-- Running agent steps by run: a claim and a settlement count them for a run with a
-- max_parallel. Without it, their generic plans (a worker's) counted through
-- steps_leased, reading every running step of every run and that index's dead entries.
CREATE INDEX steps_running_agents ON steps (run_id) WHERE status = 'running' AND agent;
