-- Durable timers (shared/timers.py): a caller schedules one by a stable key in its own
-- transaction; a worker fires it once, in one transaction with the handler's writes.
CREATE TABLE timers (
    key           text        PRIMARY KEY,          -- the caller's name, e.g. case:<id>:resolve_by
    kind          text        NOT NULL,             -- which handler fires it
    payload       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    due_at        timestamptz NOT NULL,             -- when it should fire
    run_at        timestamptz NOT NULL,             -- when a worker may try it: due_at, later after a failure
    scheduled_at  timestamptz NOT NULL DEFAULT now(),
    fired_at      timestamptz,
    cancelled_at  timestamptz,
    failed_at     timestamptz,                      -- given up after too many failed attempts
    attempts      integer     NOT NULL DEFAULT 0,   -- failed attempts since it was (re)scheduled
    last_error    text                              -- the last failure's exception type, nothing more
);
-- What the workers claim and wait for: pending timers by the time they may run.
CREATE INDEX timers_pending ON timers (run_at)
    WHERE fired_at IS NULL AND cancelled_at IS NULL AND failed_at IS NULL;
-- Retention and reports find fired timers by age.
CREATE INDEX timers_fired_at ON timers (fired_at) WHERE fired_at IS NOT NULL;
