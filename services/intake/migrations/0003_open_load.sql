-- Each member's open load (sum of the weights of their open cases), kept by a trigger so that
-- assignment reads one column instead of summing every open case of the team.
ALTER TABLE staff ADD COLUMN open_load integer NOT NULL DEFAULT 0;

UPDATE staff s SET open_load = coalesce(
    (SELECT sum(a.weight) FROM assignments a WHERE a.staff_id = s.staff_id AND a.open), 0);

CREATE FUNCTION assignments_keep_open_load() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.open AND OLD.staff_id IS NOT NULL THEN
        UPDATE staff SET open_load = open_load - OLD.weight WHERE staff_id = OLD.staff_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.open AND NEW.staff_id IS NOT NULL THEN
        UPDATE staff SET open_load = open_load + NEW.weight WHERE staff_id = NEW.staff_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER assignments_open_load
    AFTER INSERT OR DELETE OR UPDATE OF staff_id, weight, open ON assignments
    FOR EACH ROW EXECUTE FUNCTION assignments_keep_open_load();
