-- Ready steps by kind, then by when they became ready: a claim takes agent steps and
-- the others within separate capacities, and each is now one index range instead of
-- a scan that filters out the other kind (a worker whose agent slots were full read
-- past every ready agent step to find a code step).
DROP INDEX steps_ready;
CREATE INDEX steps_ready ON steps (agent, ready_at) WHERE status = 'pending' AND waiting_on = 0;
