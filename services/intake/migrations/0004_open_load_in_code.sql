-- The per-row trigger wrote a new version of a member's row for every assignment, which
-- doubled intake's latency; the load is now adjusted once per batch by the code that assigns.
DROP TRIGGER assignments_open_load ON assignments;
DROP FUNCTION assignments_keep_open_load();
