-- Who holds a complaint lives in `assignments` alone; the copy on `complaints` was written on
-- every assignment (a second row version per complaint) and never read.
ALTER TABLE complaints DROP COLUMN assignee;
