"""One settings object, read once at the entry point and passed down.

Values come from environment variables prefixed ``FEEDBACK_LOOP_`` (for example
``FEEDBACK_LOOP_KAFKA_BOOTSTRAP=localhost:9092``); command-line flags override them.
Library code never reads ``os.environ``: it receives a :class:`Settings`.

Examples
--------
>>> s = Settings(kafka_bootstrap="localhost:9092", topic_prefix="dev.")
>>> s.topic("predictions")
'dev.predictions'
>>> s.topics.labels
'dev.labels'
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TOPIC_NAMES = (
    "predictions",
    "labels",
    "review-flags",
    "outcomes",
    "metrics",
    "drift-alerts",
    "review-queue",
    "model-updates",
    "dead-letters",
)


class Topics(NamedTuple):
    """The concrete topic names, after the optional prefix."""

    predictions: str
    labels: str
    review_flags: str
    outcomes: str
    metrics: str
    drift_alerts: str
    review_queue: str
    model_updates: str
    dead_letters: str


class Settings(BaseSettings):
    """Settings of every feedback-loop process."""

    model_config = SettingsConfigDict(env_prefix="FEEDBACK_LOOP_", extra="ignore")

    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap address HOST:PORT; unset means start the embedded broker."
    )
    redis_url: str | None = Field(
        None, description="Redis URL; unset means start the embedded Redis."
    )
    topic_prefix: str = Field("", description="Prefix applied to every topic name.")
    partitions: int = Field(8, ge=1, le=1024, description="Partitions of each topic created at startup.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of created topics.")
    app_id: str = Field("feedback-loop", description="Faust application id (consumer group).")
    redis_namespace: str = Field("fl", description="Prefix of every Redis key.")
    data_dir: Path = Field(Path(".feedback-loop"), description="Where embedded Redis persists its data.")

    # The join
    prediction_ttl_seconds: float = Field(
        7 * 24 * 3600.0, gt=0,
        description="Event-time seconds an unlabeled prediction (or a label without prediction) waits before it expires.",
    )
    outcome_retention_seconds: float = Field(
        7 * 24 * 3600.0, gt=0,
        description="Event-time seconds a labeled prediction is kept so later truth can still revise it.",
    )
    watermark_idle_seconds: float = Field(
        30.0, gt=0,
        description="Wall seconds after which a silent input (predictions or labels) stops holding back the event-time watermark.",
    )
    expiry_interval_seconds: float = Field(1.0, gt=0, description="How often idle partitions are checked for expiry.")
    rolling_window: int = Field(1000, ge=1, description="Outcomes in the rolling metrics window.")
    max_event_bytes: int = Field(1_000_000, ge=1024, description="Larger messages are dead-lettered.")
    batch_max: int = Field(2000, ge=1, description="Most events processed in one batch.")
    batch_within_seconds: float = Field(0.05, gt=0, description="Longest wait to fill a batch.")
    metrics_interval_seconds: float = Field(1.0, gt=0, description="How often merged metrics are published.")

    # Faust / consumer
    broker_rebalance_timeout: float = Field(5.0, gt=0, description="Consumer-group rebalance timeout (s).")
    broker_session_timeout: float = Field(10.0, gt=0)
    broker_heartbeat_interval: float = Field(1.0, gt=0)
    shutdown_timeout_seconds: float = Field(10.0, gt=0, description="Bound on any graceful stop before a kill.")
    log_level: str = Field("warning")

    # HTTP
    web_host: str = Field("127.0.0.1")
    web_port: int = Field(8080, ge=0, le=65535)

    @field_validator("kafka_bootstrap", "redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def topic(self, name: str) -> str:
        """Return the concrete name of the contract topic ``name``."""
        if name not in TOPIC_NAMES:
            raise KeyError(f"unknown topic {name!r}; known: {', '.join(TOPIC_NAMES)}")
        return f"{self.topic_prefix}{name}"

    @property
    def topics(self) -> Topics:
        return Topics(*(self.topic(n) for n in TOPIC_NAMES))

    def key(self, *parts: object) -> str:
        """Return a Redis key in this deployment's namespace.

        >>> Settings().key("join", 3)
        'fl:join:3'
        """
        return ":".join([self.redis_namespace, *map(str, parts)])

    def to_env(self) -> dict[str, str]:
        """Environment variables that reproduce these settings in a child process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is not None:
                env[f"FEEDBACK_LOOP_{name.upper()}"] = str(value)
        return env
