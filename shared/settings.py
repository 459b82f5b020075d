"""Configuration from the environment (or `.env`), built at start-up, never at import."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the contract's configuration table, plus the operational ones we add."""

    model_config = SettingsConfigDict(
        env_prefix="COMPLAINTS_", env_file=".env", extra="ignore", frozen=True
    )

    kafka_bootstrap: str | None = None
    database_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=8025, ge=1, le=65535)
    smtp_from: str = "complaints@localhost"
    smtp_timeout_s: float = 10.0

    # Kafka security, named as aiokafka names it.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_plain_username: str | None = None
    kafka_sasl_plain_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_topic_partitions: int = Field(default=8, ge=1)
    kafka_replication_factor: int = Field(default=1, ge=1)
    # Latency of a consumer follows this on brokers whose fetch is not woken by new data.
    kafka_fetch_max_wait_ms: int = Field(default=10, ge=1)
    # ... and once a consumer has had no record for a second, its fetches wait this long, so
    # idle consumers do not keep such a broker busy (see shared/fetch_pacing.py).
    kafka_idle_fetch_wait_ms: int = Field(default=100, ge=1)
    kafka_max_batch: int = Field(default=200, ge=1)
    # Consumers off every latency path (intake following case outcomes for staff load) fetch
    # at most this often, in larger batches: fewer fetches and offset commits for the broker.
    kafka_follower_fetch_wait_ms: int = Field(default=250, ge=1)
    # Intake also follows case changes on complaints.events.v1, where versions before the
    # internal cases feed (topics.CASES) read them: for a rolling upgrade from such a version.
    # Unset: it does when its group has read that topic before (an earlier version ran), not
    # on a new installation. Set false once every service runs this version and intake's
    # `complaints-intake-cases` group has no lag on complaints.events.v1. Gone next version.
    intake_follow_events_topic: bool | None = None

    # Signs staff and customer tokens; `complaints up` keeps a generated one in the state dir.
    auth_secret: SecretStr | None = None
    # The longest a staff token may live: one asking for longer is not issued, and one that
    # claims longer (signed with an old setting, say) is refused.
    staff_token_max_lifetime_s: int = Field(default=12 * 3600, ge=60)
    # A replica reads a member's directory entry again for a token check once it read it this
    # long ago: a removal, revocation or change of role or team it has learnt is enforced
    # within as long (0: every time).
    staff_recheck_s: float = Field(default=1.0, ge=0)
    database_pool_size: int = Field(default=8, ge=1)
    # MB of case states a resolution replica keeps for its next decisions (about 4 KB an opened
    # case, more with the text written into it; 0: none, every decision replays its whole log).
    case_states_mb: int = Field(default=128, ge=0)
    outbox_poll_interval_s: float = Field(default=0.5, gt=0)
    # Retention (see shared/retention.py). Published outbox rows: as long as the broker keeps
    # its topics, to refill a broker that lost data. Inbox rows: longer than that, or a record
    # the broker can still redeliver could be handled twice. The live stream's replay buffer
    # holds personal data: a week.
    outbox_retention_hours: float = Field(default=14 * 24, gt=0)
    inbox_retention_hours: float = Field(default=30 * 24, gt=0)
    stream_retention_hours: float = Field(default=7 * 24, gt=0)
    retention_interval_s: float = Field(default=600, gt=0)
    public_base_url: str | None = None

    # Consumers (see shared/kafka.py). A record that fails for a reason that is not the
    # database or broker being away is tried this many times, then dead-lettered.
    consumer_max_tries: int = Field(default=3, ge=1)
    # A dead member leaves its group after the session timeout: a restarted replica waits
    # about that long for its partitions.
    kafka_session_timeout_ms: int = Field(default=6_000, ge=1_000)
    # A stable name for this replica (`intake-1`, a systemd instance name): its consumers join
    # as static members, so a restart takes their partitions back without a rebalance. Unset:
    # dynamic membership. Never give two running replicas the same name.
    kafka_instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    kafka_heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    # A dead letter on the topic carries at most this much of the original (the full original
    # stays in the refusing service's `deadletters` table); kept that many hours.
    deadletter_preview_bytes: int = Field(default=64 * 1024, ge=0, le=512 * 1024)
    deadletter_retention_hours: float = Field(default=30 * 24, gt=0)
    # Outbox rows pending longer than this make the relay report itself lagging.
    outbox_lag_alarm_s: float = Field(default=30.0, gt=0)

    # Quotas. Each channel key may submit `key_rate_per_s` requests a second with bursts of
    # `key_burst` (a key created with its own rate keeps it), across every intake replica.
    key_rate_per_s: float = Field(default=50.0, gt=0)
    key_burst: int = Field(default=200, ge=1)
    # Each staff member may act (HTTP actions and commands together) `staff_action_rate` times
    # a second with bursts of `staff_action_burst`, across every resolution replica.
    staff_action_rate: float = Field(default=10.0, gt=0)
    staff_action_burst: int = Field(default=50, ge=1)
    # At most this many receipts per customer address (case-insensitive) per digest interval;
    # past it the address gets one digest per interval instead.
    receipt_limit_per_address: int = Field(default=5, ge=1)
    receipt_digest_interval_s: float = Field(default=3600.0, gt=0)

    # The mailer: kept-alive SMTP connections, messages in flight, and how long a claimed
    # message stays leased (renewed while it is being sent; a dead mailer's lease runs out).
    smtp_connections: int = Field(default=8, ge=1)
    smtp_max_in_flight: int = Field(default=64, ge=1)
    mailer_lease_s: float = Field(default=10.0, gt=0)

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection options for any aiokafka client, security included."""
        if not self.kafka_bootstrap:
            raise RuntimeError("no Kafka broker configured (COMPLAINTS_KAFKA_BOOTSTRAP)")
        opts: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap.split(","),
            "security_protocol": self.kafka_security_protocol,
            "request_timeout_ms": 30_000,
        }
        if self.kafka_sasl_mechanism:
            opts["sasl_mechanism"] = self.kafka_sasl_mechanism
            opts["sasl_plain_username"] = self.kafka_sasl_plain_username
            if self.kafka_sasl_plain_password is not None:
                opts["sasl_plain_password"] = self.kafka_sasl_plain_password.get_secret_value()
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            opts["ssl_context"] = create_ssl_context(
                cafile=self.kafka_ssl_cafile,
                certfile=self.kafka_ssl_certfile,
                keyfile=self.kafka_ssl_keyfile,
            )
        return opts

    def base_url(self) -> str:
        """The public URL of the HTTP API, used in links (status, feedback)."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.http_host}:{self.http_port}"

    def require_database_url(self) -> str:
        """The database URL, or a clear error when none was resolved."""
        if not self.database_url:
            raise RuntimeError("no database configured (COMPLAINTS_DATABASE_URL)")
        return self.database_url
