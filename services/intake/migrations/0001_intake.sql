-- Intake's record of every accepted complaint; (channel, external_id) makes a submission idempotent.
CREATE TABLE complaints (
    complaint_id     text        PRIMARY KEY,
    channel          text        NOT NULL,
    external_id      text        NOT NULL,
    customer_id      text        NOT NULL,
    category         text        NOT NULL,
    category_reason  text        NOT NULL,
    severity         text        NOT NULL,
    severity_reasons jsonb       NOT NULL,
    team             text        NOT NULL,
    assignee         text,
    language         text        NOT NULL,
    received_at      timestamptz NOT NULL,
    source           text        NOT NULL,
    submission       jsonb       NOT NULL,
    CONSTRAINT complaints_submission_unique UNIQUE (channel, external_id)
);
CREATE INDEX complaints_customer ON complaints (customer_id, received_at);

-- Channel keys, stored as SHA-256 hashes only.
CREATE TABLE channel_keys (
    key_id      text        PRIMARY KEY,
    channel     text        NOT NULL,
    key_hash    text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
