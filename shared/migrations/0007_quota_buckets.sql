-- One token bucket per limited caller (shared/quotas.py), shared by every replica of the
-- service: a channel key's submissions in intake, a staff member's actions in resolution (the
-- id is the caller's: one limit per id in a schema). Unlogged: a crash that empties it only
-- gives each caller a fresh burst. `granted` is what the last take handed to a replica.
CREATE UNLOGGED TABLE quota_buckets (
    bucket_id   text             PRIMARY KEY,
    tokens      double precision NOT NULL,
    granted     integer          NOT NULL,
    refilled_at timestamptz      NOT NULL
);
