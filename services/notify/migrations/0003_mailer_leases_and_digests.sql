-- A lease names the mailer holding it: only the holder renews it or settles the message.
ALTER TABLE notifications ADD COLUMN lease_owner uuid;
-- A receipt held back for a flooded address (status 'held') names the digest that carries it;
-- a digest is a notification of kind 'digest' whose subject and body are written when sent.
ALTER TABLE notifications ADD COLUMN digest_id text;
CREATE INDEX notifications_digest ON notifications (digest_id) WHERE digest_id IS NOT NULL;
-- Retention deletes delivered messages by age.
CREATE INDEX notifications_sent_at ON notifications (sent_at) WHERE sent_at IS NOT NULL;

-- Receipts sent to each customer address (trimmed, lower-case) in its current interval, and
-- the digest holding the interval's further receipts.
CREATE TABLE receipt_windows (
    address       text        PRIMARY KEY,
    window_start  timestamptz,
    receipts      integer     NOT NULL DEFAULT 0,
    digest_id     text
);
CREATE INDEX receipt_windows_start ON receipt_windows (window_start);
