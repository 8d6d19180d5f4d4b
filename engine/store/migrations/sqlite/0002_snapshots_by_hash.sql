-- A run's snapshot (its flow, prompts and personas as launched) is stored once per
-- content, by its SHA-256, not once per run: launches of an unchanged flow share it.
-- It was about 6 KB of every run's row for the hello flow, most of what a launch wrote.
CREATE TABLE snapshots (
    hash TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
INSERT INTO snapshots (hash, body)
SELECT snapshot_hash, min(snapshot) FROM runs GROUP BY snapshot_hash;
ALTER TABLE runs DROP COLUMN snapshot;
