-- A reopened case (a staff reopen or the customer's appeal) is contact again: it counts as a
-- repeat contact in the customer's history, like a new complaint received at that time.
ALTER TABLE complaints
    ADD COLUMN reopens          integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_reopened_at timestamptz;
