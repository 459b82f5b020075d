-- What routing decided and why, shown to staff; and the channel keys learnt from intake.
ALTER TABLE cases
    ADD COLUMN category_reason   text,
    ADD COLUMN severity_score    integer,
    ADD COLUMN team_reason       text,
    ADD COLUMN assignment_reason text,
    ADD COLUMN flags             jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN review_by         text,
    ADD COLUMN customer_history  jsonb;

CREATE TABLE channel_keys (
    key_hash    text        PRIMARY KEY,
    key_id      text        NOT NULL,
    channel     text        NOT NULL,
    revoked_at  timestamptz
);
