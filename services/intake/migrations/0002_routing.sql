-- Routing: the staff directory, the editable routing table, and who holds which case.
CREATE TABLE staff (
    staff_id          text        PRIMARY KEY,
    name              text        NOT NULL,
    team              text        NOT NULL,
    role              text        NOT NULL CHECK (role IN ('agent', 'senior_agent', 'supervisor', 'manager', 'director')),
    languages         text[]      NOT NULL DEFAULT ARRAY['en'],
    capacity          integer     NOT NULL DEFAULT 20 CHECK (capacity >= 0),
    available         boolean     NOT NULL DEFAULT true,
    last_assigned_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX staff_team ON staff (team, staff_id);

CREATE TABLE routing_rules (
    rule_id     bigserial   PRIMARY KEY,
    priority    integer     NOT NULL DEFAULT 100,
    category    text,
    channel     text,
    language    text,
    severity    text,
    tier        text,
    team        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO routing_rules (category, team) VALUES
    ('product', 'product-quality'), ('warranty', 'product-quality'),
    ('price_quality', 'product-quality'), ('service', 'customer-care'),
    ('staff_conduct', 'conduct-review'), ('facilities', 'store-operations'),
    ('stock', 'store-operations'), ('advertising', 'marketing'), ('website_phone', 'digital');

CREATE TABLE assignments (
    complaint_id  text        PRIMARY KEY REFERENCES complaints (complaint_id),
    team          text        NOT NULL,
    staff_id      text,
    weight        integer     NOT NULL,
    open          boolean     NOT NULL DEFAULT true,
    acknowledged  boolean     NOT NULL DEFAULT false,
    assigned_at   timestamptz NOT NULL
);
CREATE INDEX assignments_open_by_staff ON assignments (staff_id) WHERE open;

ALTER TABLE complaints
    ADD COLUMN severity_score integer,
    ADD COLUMN flags          jsonb   NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN amount_at_stake numeric,
    ADD COLUMN currency       text,
    ADD COLUMN outcome        text,
    ADD COLUMN satisfaction   integer;
