"""Topic names and message keys of the public contract."""

SUBMITTED = "complaints.submitted.v1"
EVENTS = "complaints.events.v1"
DEADLETTER = "complaints.deadletter.v1"
# Staff actions from consoles that speak Kafka (each with the member's bearer token in the
# `authorization` header), keyed by complaint id.
COMMANDS = "complaints.commands.v1"

# Internal: channel key lifecycle, published by intake for the services that check keys.
CHANNEL_KEYS = "complaints.internal.channel-keys.v1"
# Internal: the staff directory (full state of a member per event, keyed by staff id),
# published by intake, which owns it, for the services that check tokens and authority.
STAFF = "complaints.internal.staff.v1"

# Internal: a copy of each event that changes what intake keeps of a case (who holds it,
# whether it is open, its outcome, the customer's rating), keyed by complaint id, written by
# the outbox of whichever service publishes the event (`outbox.enqueue`). Intake follows this
# feed instead of the whole of `EVENTS`: most events there (its own two per complaint, every
# notification) are of no use to it, and reading them cost about a tenth of its CPU.
CASES = "complaints.internal.cases.v1"
CASE_FEED = frozenset(
    {
        "complaint.acknowledged",
        "complaint.assigned",
        "complaint.resolved",
        "complaint.reopened",
        "complaint.closed",
        "complaint.feedback_received",
    }
)

ALL = (SUBMITTED, EVENTS, DEADLETTER, COMMANDS, CHANNEL_KEYS, STAFF, CASES)

# The internal topics carry the latest state per key (a member, a key): compacted, so a
# service started a year later still learns every member and key, while old states go.
CONFIGS: dict[str, dict[str, str]] = {
    CHANNEL_KEYS: {"cleanup.policy": "compact"},
    STAFF: {"cleanup.policy": "compact"},
}


def submission_key(channel: str, external_id: str) -> str:
    """Key of a submission: all submissions of one (channel, external_id) share a partition."""
    return f"{channel}:{external_id}"


def complaint_key(complaint_id: str) -> str:
    """Key of a domain event: one complaint's events keep their order."""
    return complaint_id
