#!/usr/bin/env bash
# Create the topics on a production Kafka and set their configuration (run before each
# release's services start; safe to rerun: a topic that exists gets its configuration set).
# The services create any that are missing when they start, but with the broker's defaults.
set -euo pipefail
BOOTSTRAP="${1:?usage: topics.sh BOOTSTRAP [PARTITIONS] [REPLICATION]}"
PARTITIONS="${2:-24}"
REPLICATION="${3:-3}"

topic() {  # topic NAME CONFIGS (comma-separated key=value)
  local name="$1" configs="min.insync.replicas=2,$2"
  kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$name" \
    --partitions "$PARTITIONS" --replication-factor "$REPLICATION"
  kafka-configs.sh --bootstrap-server "$BOOTSTRAP" --alter --entity-type topics \
    --entity-name "$name" --add-config "$configs"
}

# the contract's topics, and intake's internal feed of case changes: 14 days
for name in complaints.submitted.v1 complaints.events.v1 complaints.deadletter.v1 \
  complaints.commands.v1 complaints.internal.cases.v1; do
  topic "$name" retention.ms=1209600000
done
# the latest state per key (a channel key, a staff member), kept for good
for name in complaints.internal.channel-keys.v1 complaints.internal.staff.v1; do
  topic "$name" cleanup.policy=compact
done
