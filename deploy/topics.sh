#!/usr/bin/env bash
# Create the topics on a production Kafka (run once per release; safe to rerun). The services
# create any that are missing when they start, but with the broker's defaults; this sets what
# production wants (retention, replication, compaction of the internal state topics).
set -euo pipefail
BOOTSTRAP="${1:?usage: topics.sh BOOTSTRAP [PARTITIONS] [REPLICATION]}"
PARTITIONS="${2:-24}"
REPLICATION="${3:-3}"

create() {  # create TOPIC CONFIG...
  local topic="$1"
  shift
  kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$topic" \
    --partitions "$PARTITIONS" --replication-factor "$REPLICATION" \
    --config min.insync.replicas=2 "$@"
}

# the contract's topics, and intake's internal feed of case changes: 14 days
for topic in complaints.submitted.v1 complaints.events.v1 complaints.deadletter.v1 \
  complaints.commands.v1 complaints.internal.cases.v1; do
  create "$topic" --config retention.ms=1209600000
done
# the latest state per key (a channel key, a staff member), kept for good
for topic in complaints.internal.channel-keys.v1 complaints.internal.staff.v1; do
  create "$topic" --config cleanup.policy=compact
done
