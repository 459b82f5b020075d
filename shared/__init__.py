"""Common machinery of the complaints services: settings, events, outbox, inbox, telemetry."""
