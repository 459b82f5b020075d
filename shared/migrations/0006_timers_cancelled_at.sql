-- Retention finds cancelled timers by age, oldest first (shared/retention.py), as it finds
-- fired ones: without an index it read and sorted every cancelled timer on every pass.
CREATE INDEX timers_cancelled_at ON timers (cancelled_at) WHERE cancelled_at IS NOT NULL;
