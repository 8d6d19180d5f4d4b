-- The attempt a step ran alone on its worker (taken over from a lost worker by a worker
-- running nothing else). Only the loss of such an attempt counts as the step's crash:
-- with company, any step of the worker may have taken it down.
ALTER TABLE steps ADD COLUMN alone_attempt INTEGER NOT NULL DEFAULT 0;
