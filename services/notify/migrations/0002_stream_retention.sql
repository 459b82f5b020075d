-- Retention deletes the live stream's replay buffer by age.
CREATE INDEX stream_events_at ON stream_events (at);
