-- The case as a decider's events (services/resolution/case.py): the decision log, the
-- remedies it applied, the authority policy's versions, and retried actions' answers.

-- Each case's decided events, in order, hash-chained (prev_hash -> hash) per case; each
-- published event carries its hash, so the log outside the database witnesses this table.
CREATE TABLE case_events (
    complaint_id  text        NOT NULL,
    seq           integer     NOT NULL,              -- the case version after this event
    event_id      text        NOT NULL UNIQUE,       -- the CloudEvent id it was published under
    type          text        NOT NULL,
    at            timestamptz NOT NULL,
    actor         text        NOT NULL,
    data          jsonb       NOT NULL,              -- the event's data, chain link included
    prev_hash     text        NOT NULL,
    hash          text        NOT NULL,
    PRIMARY KEY (complaint_id, seq)                  -- two deciders on one version: one wins
);

-- The case's read model grows what decisions change (the decision log is the truth).
ALTER TABLE cases
    ADD COLUMN customer_id      text,
    ADD COLUMN amount_at_stake  jsonb,
    ADD COLUMN version          integer NOT NULL DEFAULT 0,
    ADD COLUMN chain_head       text,
    ADD COLUMN waiting_role     text,                -- an approval waits for this role
    ADD COLUMN breached         boolean NOT NULL DEFAULT false,
    ADD COLUMN decided_outcome  text,
    ADD COLUMN policy_version   integer,
    -- the nearest running deadline ('infinity' when none runs): the queue's order
    ADD COLUMN next_due         timestamptz NOT NULL DEFAULT 'infinity';
-- The queue, nearest deadline first: every team's (managers), and one team's.
CREATE INDEX cases_due_queue ON cases (next_due, complaint_id) WHERE version > 0;
CREATE INDEX cases_team_queue ON cases (team, next_due, complaint_id) WHERE version > 0;
-- Cases that name a staff member, for their reading of the queue.
CREATE INDEX cases_named ON cases USING gin (staff_involved jsonb_path_ops) WHERE version > 0;

-- Remedies applied (an approval included), for the caps (a customer's last 30 days, an
-- authoriser's day), the consistency samples and the review of policy exceptions.
CREATE TABLE remedies (
    event_id          text        PRIMARY KEY,       -- the complaint.remedy_approved event
    complaint_id      text        NOT NULL,
    customer_id       text        NOT NULL,
    type              text        NOT NULL,
    amount            numeric,
    currency          text,
    percent           numeric,
    category          text        NOT NULL,
    severity          text        NOT NULL,
    band              text        NOT NULL,          -- policy.consistency_band of the complaint
    proposer          text        NOT NULL,
    authorized_by     text        NOT NULL,
    authorized_role   text        NOT NULL,
    policy_exception  boolean     NOT NULL DEFAULT false,
    justification     text,
    policy_version    integer     NOT NULL,
    at                timestamptz NOT NULL
);
CREATE INDEX remedies_customer ON remedies (customer_id, at);
CREATE INDEX remedies_authorizer ON remedies (authorized_by, at);
CREATE INDEX remedies_similar ON remedies (category, severity, band, currency, at);
CREATE INDEX remedies_exceptions ON remedies (at) WHERE policy_exception;

-- Versions of the authority and clock policy: every one kept, with who loaded it; one active.
CREATE TABLE policies (
    version    integer     PRIMARY KEY,
    document   jsonb       NOT NULL,                 -- exactly what `policy show --json` prints
    loaded_by  text        NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now(),
    active     boolean     NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX policies_one_active ON policies (active) WHERE active;

-- The answer to an action sent with an Idempotency-Key: a retry gets it again, applied once.
CREATE TABLE action_requests (
    complaint_id     text        NOT NULL,
    actor            text        NOT NULL,
    idempotency_key  text        NOT NULL,
    request_sha256   text        NOT NULL,           -- the action it answered: a key names one
    status           integer     NOT NULL,
    body             jsonb       NOT NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (complaint_id, actor, idempotency_key)
);
CREATE INDEX action_requests_at ON action_requests (at);
