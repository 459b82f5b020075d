-- Retention deletes inbox rows by age: let it find them without reading the whole table.
CREATE INDEX inbox_handled_at ON inbox (handled_at);
