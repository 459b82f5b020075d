-- Members can be removed (inactive: no tokens, no cases) and have their tokens revoked; every
-- change bumps `version`, and changes not yet announced to the other services are those with
-- `version > announced_version` (announced in the transaction that makes them, and at start).
ALTER TABLE staff
    ADD COLUMN active             boolean     NOT NULL DEFAULT true,
    ADD COLUMN tokens_valid_after timestamptz,
    ADD COLUMN version            bigint      NOT NULL DEFAULT 1,
    ADD COLUMN announced_version  bigint      NOT NULL DEFAULT 0;
CREATE INDEX staff_unannounced ON staff (staff_id) WHERE version > announced_version;
