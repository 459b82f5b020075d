#!/usr/bin/env bash
# Create the contract's topics on a production Kafka (run once; safe to rerun).
set -euo pipefail
BOOTSTRAP="${1:?usage: topics.sh BOOTSTRAP [PARTITIONS] [REPLICATION]}"
PARTITIONS="${2:-24}"
REPLICATION="${3:-3}"
for topic in complaints.submitted.v1 complaints.events.v1 complaints.deadletter.v1; do
  kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$topic" \
    --partitions "$PARTITIONS" --replication-factor "$REPLICATION" \
    --config min.insync.replicas=2 --config retention.ms=1209600000
done
