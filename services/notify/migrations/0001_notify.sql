-- Messages to customers and staff: planned in the consumer's transaction, delivered by the mailer.
CREATE TABLE notifications (
    notification_id  text        PRIMARY KEY,
    complaint_id     text        NOT NULL,
    kind             text        NOT NULL,
    medium           text        NOT NULL,
    recipient        text        NOT NULL,
    language         text        NOT NULL,
    subject          text        NOT NULL,
    body             text        NOT NULL,
    trace_headers    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    last_error       text,
    CONSTRAINT notifications_once UNIQUE (complaint_id, kind)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';

-- Every domain event, in arrival order, for the staff consoles' live stream.
CREATE TABLE stream_events (
    id            bigserial   PRIMARY KEY,
    event_id      text        NOT NULL UNIQUE,
    complaint_id  text,
    type          text        NOT NULL,
    team          text,
    at            timestamptz NOT NULL,
    event         jsonb       NOT NULL
);

-- The team of each complaint, learnt from `complaint.routed`, to filter the stream.
CREATE TABLE complaint_teams (
    complaint_id  text PRIMARY KEY,
    team          text NOT NULL
);
