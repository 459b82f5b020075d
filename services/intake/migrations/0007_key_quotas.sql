-- A key's own submission limit; NULL means the configured default (`COMPLAINTS_KEY_RATE_PER_S`,
-- `COMPLAINTS_KEY_BURST`).
ALTER TABLE channel_keys
    ADD COLUMN rate_per_s double precision CHECK (rate_per_s > 0),
    ADD COLUMN burst      integer          CHECK (burst >= 1);

-- One token bucket per key, shared by every intake replica. Unlogged: a crash that empties it
-- only gives each key a fresh burst. `granted` is what the last take handed to a replica.
CREATE UNLOGGED TABLE key_buckets (
    key_id      text             PRIMARY KEY,
    tokens      double precision NOT NULL,
    granted     integer          NOT NULL,
    refilled_at timestamptz      NOT NULL
);
