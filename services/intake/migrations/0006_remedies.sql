-- The value of the remedy each case was resolved with (from `complaint.resolved`), so customer
-- history can tell remedies far above what was at stake.
ALTER TABLE complaints ADD COLUMN remedy_amount numeric, ADD COLUMN remedy_currency text;
