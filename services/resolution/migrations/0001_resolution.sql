-- One row per complaint case, and its audited timeline.
CREATE TABLE cases (
    complaint_id     text        PRIMARY KEY,
    status           text        NOT NULL,
    channel          text        NOT NULL,
    external_id      text        NOT NULL,
    category         text,
    severity         text,
    severity_reasons jsonb       NOT NULL DEFAULT '[]'::jsonb,
    team             text,
    assignee         text,
    language         text,
    staff_involved   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    received_at      timestamptz NOT NULL,
    routed_at        timestamptz,
    acknowledge_by   timestamptz,
    resolve_by       timestamptz,
    remedy           jsonb,
    pending_approval jsonb,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cases_queue ON cases (team, status, resolve_by);

CREATE TABLE timeline (
    id            bigserial   PRIMARY KEY,
    complaint_id  text        NOT NULL,
    event_id      text        NOT NULL UNIQUE,
    type          text        NOT NULL,
    at            timestamptz NOT NULL,
    actor         text        NOT NULL,
    detail        jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX timeline_complaint ON timeline (complaint_id, at, id);
