-- Channel keys' buckets are rows of the shared `quota_buckets` now (shared migration 0007),
-- keyed by key id. Nothing is moved: a bucket is not data (the table was unlogged), and a key
-- whose bucket is gone starts with a fresh burst, as after a database crash.
DROP TABLE key_buckets;
