-- A row the broker refuses for good (too large, say) is parked: kept, reported, and skipped, so
-- the rows behind it go out. An operator reads it and may send it again (`complaints outbox`).
ALTER TABLE outbox ADD COLUMN parked_at timestamptz, ADD COLUMN park_reason text;
DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (id) WHERE parked_at IS NOT NULL AND sent_at IS NULL;

-- Every record a consumer of this service refused, whole: the dead-letter topic carries only
-- its first bytes. Bytes are stored as bytes (header names too), so no input can fail to fit.
CREATE TABLE deadletters (
    id             text        PRIMARY KEY,          -- the dead-letter event's id
    consumer       text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    key            bytea,
    value          bytea,
    header_names   bytea[]     NOT NULL,
    header_values  bytea[]     NOT NULL,
    reason_code    text        NOT NULL,
    reason         text        NOT NULL,
    at             timestamptz NOT NULL DEFAULT now(),
    replayed_at    timestamptz
);
CREATE INDEX deadletters_at ON deadletters (at);
