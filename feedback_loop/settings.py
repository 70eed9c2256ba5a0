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

import json
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feedback_loop.errors import ConfigurationError

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
    "monitor-input",  # internal: compact predictions and outcomes keyed by model version
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
    monitor_input: str


class Settings(BaseSettings):
    """Settings of every feedback-loop process."""

    model_config = SettingsConfigDict(env_prefix="FEEDBACK_LOOP_", extra="ignore")

    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap address HOST:PORT; unset means start the embedded broker."
    )
    redis_url: str | None = Field(
        None, description="Redis URL; unset means start the embedded Redis. rediss:// is TLS; an ACL user and "
                          "password go in the URL: redis://USER:PASSWORD@HOST:PORT/DB."
    )
    topic_prefix: str = Field("", description="Prefix applied to every topic name.")

    # Kafka and Redis security (turned into client arguments by feedback_loop.kafka_security)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to Kafka: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism of the SASL_* protocols.")
    kafka_sasl_username: str | None = Field(None, description="SASL user; required by the SASL_* protocols.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password; required by the SASL_* protocols.")
    kafka_ssl_cafile: Path | None = Field(
        None, description="PEM CA bundle that signed the brokers' certificates (SSL, SASL_SSL); "
                          "unset uses the system CAs.")
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate for mutual TLS (SSL, SASL_SSL); may hold the key too.")
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM private key of kafka_ssl_certfile, when it is a separate file.")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host connected to (SSL, SASL_SSL).")
    redis_ssl_ca_certs: Path | None = Field(
        None, description="PEM CA bundle that signed Redis's certificate; needs a rediss:// redis_url.")
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
    redis_retry_seconds: float = Field(
        30.0, gt=0, description="How long a worker retries Redis (checkpoints, claims) while it is "
        "unreachable before it stops with an error.")
    snapshot_log_seconds: float = Field(
        60.0, gt=0, description="How long the log of checkpointed metric changes is kept for readers "
        "that follow it (the web API); one that falls further behind reloads every partition.")
    expiry_interval_seconds: float = Field(1.0, gt=0, description="How often idle partitions are checked for expiry.")
    rolling_window: int = Field(1000, ge=1, description="Outcomes in the rolling metrics window.")
    max_event_bytes: int = Field(1_000_000, ge=1024, description="Larger messages are dead-lettered.")
    batch_max: int = Field(2000, ge=1, description="Most events processed in one batch.")
    batch_within_seconds: float = Field(0.05, gt=0, description="Longest wait to fill a batch.")
    monitor_batch_within_seconds: float = Field(
        0.25, gt=0, description="Longest wait to fill a drift-monitor batch (one checkpoint per batch; the last "
                                "observations of a burst wait this long for the monitors).")
    metrics_interval_seconds: float = Field(1.0, gt=0, description="How often merged metrics are published.")

    # Drift detection and alerts
    concept_detector: Literal["adwin", "ddm", "page_hinkley", "kswin"] = Field(
        "adwin", description="River detector on each model version's error stream.")
    concept_detector_params: dict[str, Any] = Field(
        default_factory=dict, description='Keyword arguments of the detector, e.g. {"delta": 0.002}.')
    concept_detectors: dict[str, str] = Field(
        default_factory=dict, description='Per-model detector choice, e.g. {"churn": "ddm"}.')
    concept_resolve_samples: int = Field(
        1000, ge=1, description="Outcomes without a new change after which a concept drift is resolved.")
    drift_reference_size: int = Field(1000, ge=20, description="Predictions in a data-drift reference window.")
    drift_window_size: int = Field(500, ge=10, description="Predictions in each compared window.")
    drift_reference_files: dict[str, Path] = Field(
        default_factory=dict,
        description='Pinned data-drift references per model, a CSV or JSONL file of feature rows, '
                    'e.g. {"churn": "ref/churn.csv"}; other models use their first predictions.')
    drift_false_alarm_rate: float = Field(
        0.01, gt=0, lt=0.5, description="Wanted false-alarm rate per window on unchanged data.")
    estimate_window_size: int = Field(1000, ge=10, description="Predictions per estimated-accuracy window.")
    estimate_min_drop: float = Field(
        0.05, gt=0, lt=1, description="Estimated-accuracy drop below the first estimate that raises an alert.")
    alert_cooldown_seconds: float = Field(
        3600.0, ge=0, description="Event-time seconds before a resolved alert may fire again.")
    signing_key: SecretStr | None = Field(
        None, description="Secret signing checkpoints (detectors, routers, learners, registry versions; "
                          "HMAC-SHA256) and reviewer sessions; required by `worker`.")

    # Review routing, the review queue and reviewers
    review_policies: list[Literal["least_confidence", "margin", "entropy", "learned", "shadow",
                                  "label_error", "drift", "disagreement"]] = Field(
        default_factory=lambda: ["learned", "disagreement"],
        description="Routing policies in use (also: least_confidence, margin, entropy, shadow, drift, label_error); "
                    "an item's priority is the highest score among them.")
    review_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description='Least score for a policy to route an item at all, e.g. {"least_confidence": 0.3}; '
                    'above it the budget picks the highest priorities.')
    review_budget_per_hour: float = Field(
        60.0, gt=0, description="Review items per model per hour of event time (the prediction's timestamp).")
    review_budgets: dict[str, float] = Field(
        default_factory=dict, description='Per-model budgets, items per hour, e.g. {"churn": 20}.')
    review_budget_burst: float = Field(
        50.0, ge=1, description="Most unused budget items a model may save up and spend at once.")
    review_label_error_confidence: float = Field(
        0.9, gt=0.5, le=1, description="Confidence above which a contradicting label is suspected wrong.")
    review_drift_samples: int = Field(
        200, ge=0, description="Predictions of a model version sampled for review after a drift alert fires.")
    review_queue_capacity: int = Field(
        1000, ge=1, description="Most items waiting in the review queue; a full queue evicts the lowest priority.")
    review_lease_seconds: float = Field(
        300.0, gt=0, description="How long a reviewer holds a claimed item before it returns to the queue.")
    review_dedup_seconds: float = Field(
        30 * 24 * 3600.0, gt=0, description="How long an item routed, reviewed or labeled is remembered "
                                            "so it is never routed again.")
    reviewer_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Reviewer name -> access token, e.g. {"ana": "<token>"}; the server stamps the name on '
                    "every verdict. With none set, the reviewer page and POST routes refuse everyone.")
    web_session_seconds: float = Field(8 * 3600.0, gt=0, description="Lifetime of a reviewer's login.")

    # Online models, the registry, champion and challenger
    online_models: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Challengers learned online per model, by spec name, e.g. {"churn": ["logreg", "arf"]}; '
                    "models not named here learn nothing.")
    online_model_specs: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='More spec names, e.g. {"arf20": {"kind": "arf", "params": {"n_models": 20}}}; '
                    "built-in: logreg, softmax, hat, arf, naive_bayes, last_label.")
    registry_checkpoint_updates: int = Field(
        1000, ge=1, description="A registry version of each challenger every N updates ...")
    registry_checkpoint_seconds: float = Field(
        300.0, gt=0, description="... or every T seconds, whichever comes first (and at shutdown).")
    registry_keep: int = Field(20, ge=2, description="Registry versions kept per challenger.")
    promotion_window: int = Field(
        1000, ge=50, description="Paired outcomes (champion vs challenger) a promotion decision looks at.")
    promotion_alpha: float = Field(
        0.01, gt=0, lt=0.5, description="Significance of the one-sided exact McNemar test to promote.")
    promotion_min_margin: float = Field(
        0.01, ge=0, lt=1, description="Least accuracy gain (share of the window) to promote.")
    rollback_window: int = Field(
        1000, ge=50, description="Outcomes after a promotion over which the new champion is checked.")
    rollback_margin: float = Field(
        0.02, ge=0, lt=1, description="Accuracy below the one it was promoted with that rolls it back.")

    # Faust / consumer
    broker_rebalance_timeout: float = Field(5.0, gt=0, description="Consumer-group rebalance timeout (s).")
    broker_session_timeout: float = Field(10.0, gt=0)
    broker_heartbeat_interval: float = Field(1.0, gt=0)
    broker_fetch_max_wait_ms: int = Field(
        100, ge=1, le=5000,
        description="Longest the broker holds a fetch waiting for data (Faust's own default is 1500). Apache "
                    "Kafka answers as soon as data arrives; the embedded broker looks again only after half "
                    "of it, so there the first message after a quiet moment waits up to about that long.")
    shutdown_timeout_seconds: float = Field(10.0, gt=0, description="Bound on any graceful stop before a kill.")
    log_level: str = Field("warning")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="The event loop of the worker and web processes: uvloop (libuv's loop, compiled: "
                              "less CPU per event in the loop and its socket I/O) or Python's own asyncio loop.")

    # HTTP
    web_host: str = Field("127.0.0.1")
    web_port: int = Field(8080, ge=0, le=65535)

    @field_validator("kafka_bootstrap", "redis_url", "kafka_sasl_username", "kafka_sasl_password",
                     "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "redis_ssl_ca_certs",
                     mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", "kafka_ssl_check_hostname", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object, info: ValidationInfo) -> object:
        # docker compose passes an unset ${VAR:-} as an empty string: empty means the default.
        if isinstance(value, str):
            if not value.strip():
                return cls.model_fields[info.field_name or ""].default
            if info.field_name != "kafka_ssl_check_hostname":
                return value.strip().upper()
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        """Refuse security settings that cannot work together, saying what to do instead."""
        protocol = self.kafka_security_protocol
        env = "FEEDBACK_LOOP_KAFKA_SECURITY_PROTOCOL"
        if protocol != "PLAINTEXT" and self.kafka_bootstrap is None:
            raise ConfigurationError(
                f"kafka_security_protocol is {protocol} but no Kafka is configured, and the embedded broker "
                f"speaks PLAINTEXT only: set FEEDBACK_LOOP_KAFKA_BOOTSTRAP (--kafka) to your cluster, or unset {env}")
        sasl_fields = ("kafka_sasl_username", "kafka_sasl_password")
        if protocol.startswith("SASL_"):
            missing = [f"FEEDBACK_LOOP_{name.upper()}" for name in sasl_fields if getattr(self, name) is None]
            if missing:
                raise ConfigurationError(
                    f"kafka_security_protocol {protocol} needs a SASL user and password: set "
                    f"{' and '.join(missing)}, or choose SSL or PLAINTEXT in {env}")
        else:
            given = [f"FEEDBACK_LOOP_{name.upper()}" for name in sasl_fields if getattr(self, name) is not None]
            if given:
                raise ConfigurationError(
                    f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but kafka_security_protocol "
                    f"is {protocol}, which does not use SASL: set {env}=SASL_SSL (or SASL_PLAINTEXT), "
                    "or unset them")
        files = {name: getattr(self, name) for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")}
        if protocol not in ("SSL", "SASL_SSL"):
            given = [f"FEEDBACK_LOOP_{name.upper()}" for name, value in files.items() if value is not None]
            if given:
                raise ConfigurationError(
                    f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but kafka_security_protocol "
                    f"is {protocol}, which does not use TLS: set {env}=SSL (or SASL_SSL), or unset them")
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ConfigurationError(
                "kafka_ssl_keyfile is set without kafka_ssl_certfile: set FEEDBACK_LOOP_KAFKA_SSL_CERTFILE to the "
                "client certificate the key belongs to, or unset FEEDBACK_LOOP_KAFKA_SSL_KEYFILE")
        if self.redis_ssl_ca_certs is not None and not (self.redis_url or "").lower().startswith("rediss://"):
            raise ConfigurationError(
                "redis_ssl_ca_certs is set but redis_url is not a rediss:// (TLS) URL: set FEEDBACK_LOOP_REDIS_URL "
                "to rediss://[USER:PASSWORD@]HOST:PORT/DB, or unset FEEDBACK_LOOP_REDIS_SSL_CA_CERTS")
        for name, value in {**files, "redis_ssl_ca_certs": self.redis_ssl_ca_certs}.items():
            if value is not None and not value.is_file():
                raise ConfigurationError(
                    f"{name} {str(value)!r} is not a file: fix FEEDBACK_LOOP_{name.upper()} (a PEM file this "
                    "process can read; with docker compose, put it in the certs directory mounted at /certs)")
        return self

    @property
    def join_group_id(self) -> str:
        """Consumer group of the join's input topics (the Faust app's group, ``app_id``, reads
        the internal ``monitor-input`` topic)."""
        return f"{self.app_id}-join"

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
            if name in ("signing_key", "kafka_sasl_password") and getattr(self, name) is not None:
                value = getattr(self, name).get_secret_value()
            if name == "reviewer_tokens":
                value = {k: v.get_secret_value() for k, v in self.reviewer_tokens.items()}
            if value is None:
                continue
            env[f"FEEDBACK_LOOP_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        return env
