-- The staff directory as this service knows it: learnt from the owner's (intake's) events on
-- the internal staff topic, newest version wins. Credentials are checked against it.
CREATE TABLE staff_directory (
    staff_id            text        PRIMARY KEY,
    name                text        NOT NULL,
    team                text        NOT NULL,
    role                text        NOT NULL,
    languages           text[]      NOT NULL DEFAULT '{}',
    available           boolean     NOT NULL,          -- on shift: offered new cases
    active              boolean     NOT NULL,          -- a member at all: tokens valid
    tokens_valid_after  timestamptz,                   -- tokens issued before it are revoked
    version             bigint      NOT NULL,
    learnt_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX staff_directory_team ON staff_directory (team) WHERE active;
