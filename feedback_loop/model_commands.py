"""``feedback-loop models``: list a model's registry versions, promote or roll back by hand.

A decision by hand is a control record on ``monitor-input`` keyed by the model, so the model's
learner applies it in order with the outcomes (exactly once, like everything on that topic) and
announces it on ``model-updates`` after writing the registry's champion pointer.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import orjson
import redis

from feedback_loop.errors import ConfigurationError
from feedback_loop.kafka_security import kafka_python_kwargs, redis_kwargs
from feedback_loop.settings import Settings
from feedback_loop.signing import Signer
from streams.observations import monitor_key


def control_record(model: str, action: str, version: str | None, name: str | None, reason: str,
                   now: float) -> tuple[bytes, bytes]:
    """The ``monitor-input`` record of a decision by hand.

    >>> key, value = control_record("churn", "promote", "arf-u10", "arf", "", 0.0)
    >>> key, orjson.loads(value)["k"]
    (b'churn', 'c')
    """
    return monitor_key(model, ""), orjson.dumps({"k": "c", "m": model, "action": action, "version": version,
                                                 "name": name, "reason": reason, "t": now})


def run_models(settings: Settings, action: str, model: str, version: str | None, *, external: bool = False,
               reason: str = "") -> int:
    from online_models.registry import ModelRegistry
    from streams.worker import signer_for

    client = redis.Redis.from_url(settings.redis_url or "", **redis_kwargs(settings))
    try:
        registry = ModelRegistry(client, settings, signer_for(settings) if settings.signing_key else Signer(b"x" * 32))
        if action == "list":
            champion = registry.champion(model)
            print(f"champion: {champion['version'] if champion else '(none recorded)'}"
                  + (f" (previous {champion.get('previous')}, {champion.get('reason')})" if champion else ""))
            for meta in registry.versions(model):
                at = datetime.fromtimestamp(meta.get("created_at", 0), timezone.utc).isoformat()[:19]
                print(f"  {meta['version']:24s} {meta.get('name', '?'):12s} updates {meta.get('updates', 0):>9,}  {at}")
            return 0
        if model not in settings.online_models:
            raise ConfigurationError(f"model {model!r} has no online challengers (online_models: "
                                     f"{sorted(settings.online_models) or 'none'}); decisions go through its learner")
        name = None
        if action == "promote":
            if not version:
                raise ConfigurationError("`models promote` needs a VERSION (see `feedback-loop models list MODEL`)")
            known = {m["version"]: m.get("name") for m in registry.versions(model)}
            if version not in known and not external:
                raise ConfigurationError(f"{model} has no registry version {version!r}; known: "
                                         f"{', '.join(known) or 'none'} (add --external for the producer's own model)")
            name = known.get(version)
        key, value = control_record(model, action, version, name, reason, time.time())
    finally:
        client.close()
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", **kafka_python_kwargs(settings))
    try:
        producer.send(settings.topic("monitor-input"), key=key, value=value).get(timeout=15)
    finally:
        producer.close(timeout=10)
    print(f"{action} of {model}{' to ' + version if version else ''} sent; watch model-updates for the decision")
    return 0
