"""The drift monitors, review routers and online learners of one ``monitor-input`` partition,
and their processing of records.

Like :class:`streams.partition.PartitionState`, it remembers the last applied offset so a record
delivered twice is applied once, and it diverts, never crashes: an undecodable record becomes a
dead letter. It returns the alerts, review requests and model updates to publish; the caller publishes them, checkpoints, then
commits the offsets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from feedback_loop.errors import CheckpointIntegrityError
from feedback_loop.events import (
    DriftAlert,
    ModelUpdate,
    ReviewRequest,
    dead_letter,
    json_bytes,
    utc_iso,
)
from feedback_loop.routing.router import MALFORMED_OBSERVATION, Router, RoutingConfig
from feedback_loop.signing import Signer
from online_models.learner import LearnerConfig, ModelLearner
from streams.monitor import ModelMonitor, MonitorConfig
from streams.observations import SEPARATOR, read
from streams.partition import Emit, Record

log = logging.getLogger(__name__)


class MonitorChanges(NamedTuple):
    monitors: dict[bytes, bytes]
    references: dict[bytes, bytes]
    estimates: dict[bytes, bytes]
    meta: dict[str, bytes]
    alerts: list[bytes]
    routers: dict[bytes, bytes]
    learners: dict[bytes, bytes]
    learner_reports: dict[bytes, bytes]


def _plain_prediction(obs: Any) -> tuple[str, str] | None:
    """The (model, version) of a prediction observation of the usual shape, else ``None``."""
    if type(obs) is dict and obs.get("k") == "p":
        model, version = obs.get("m"), obs.get("v")
        if type(model) is str and type(version) is str:
            return model, version
    return None


@dataclass
class MonitorPartition:
    """Model monitors, offsets and pending alerts of one partition."""

    partition: int
    config: MonitorConfig
    epoch: str
    routing: RoutingConfig | None = None
    monitors: dict[tuple[str, str], ModelMonitor] = field(default_factory=dict)
    routers: dict[tuple[str, str], Router] = field(default_factory=dict)
    learning: dict[str, LearnerConfig] = field(default_factory=dict)
    learners: dict[str, ModelLearner] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    alerts: list[bytes] = field(default_factory=list)
    #: registry writes due before this batch's messages are published: (model, name, version, estimator, updates)
    registry_saves: list[tuple[str, str, str, object, int]] = field(default_factory=list)
    #: champion changes decided in this batch: (model, version, previous, action)
    champion_changes: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    refused_learners: list[str] = field(default_factory=list)
    #: observations applied since this state was loaded (liveness, not checkpointed)
    observed: int = 0
    _dirty: set[tuple[str, str]] = field(default_factory=set)
    _dirty_learners: set[str] = field(default_factory=set)
    _references_saved: dict[tuple[str, str], tuple[bool, bool]] = field(default_factory=dict)

    def apply(self, record: Record) -> list[Emit]:
        """Apply one record: a packed array of observations (see :func:`streams.observations.pack`)
        or one object; an undecodable record, or one bad observation in it, is a dead letter."""
        last = self.offsets.get(record.topic)
        if last is not None and record.offset <= last:
            return []
        self.offsets[record.topic] = record.offset
        try:
            observations, usual = read(record.value)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return [self._dead(record, record.value, f"monitor observation: {exc!r}")]
        out: list[Emit] = []
        self.observed += len(observations)
        index, count = 0, len(observations)
        while index < count:
            end = index + 1
            ident = _plain_prediction(observations[index]) if usual else None
            if ident is not None and ident[0] not in self.learning:
                # a run of predictions of one model version: each detector takes it in one pass
                while end < count and _plain_prediction(observations[end]) == ident:
                    end += 1
                emits = self._observe_predictions(ident, observations[index:end], record, index, count)
                if emits is not None:
                    out.extend(emits)
                    index = end
                    continue
            for index in range(index, end):  # one by one (a malformed one is a dead letter alone)
                obs = observations[index]
                try:
                    out.extend(self._observe(obs))
                except MALFORMED_OBSERVATION as exc:
                    out.append(self._bad(record, obs, index, count, exc))
            index = end
        return out

    def _bad(self, record: Record, obs: Any, index: int, count: int, exc: Exception) -> Emit:
        where = "" if count == 1 else f" (item {index} of {count})"
        return self._dead(record, json_bytes(obs), f"monitor observation{where}: {exc!r}")

    def _observe_predictions(self, ident: tuple[str, str], run: list[dict], record: Record, first: int,
                             count: int) -> list[Emit] | None:
        """:meth:`_observe` of a run of predictions of one version of a model without learners;
        ``None`` (nothing changed) when an observation of it is malformed: the caller then takes
        them one by one."""
        monitor = self.monitors.get(ident)
        if monitor is None:
            monitor = self.monitors[ident] = ModelMonitor(ident[0], ident[1], self.config, self.epoch)
        try:
            raised = monitor.observe_predictions(run)
        except MALFORMED_OBSERVATION:
            return None
        self._dirty.add(ident)
        router = None
        if self.routing is not None:
            router = self.routers.get(ident)
            if router is None:
                router = self.routers[ident] = Router(ident[0], ident[1], self.routing)
        alerted = {i for i, alerts in raised.items() if any(alert["status"] == "firing" for alert in alerts)}
        failed: dict[int, Exception] = {}
        routed = {} if router is None else router.on_predictions(run, alerted, failed.__setitem__)
        out: list[Emit] = []
        for offset in sorted(raised.keys() | routed.keys() | failed.keys()):
            out.extend(self._emits(raised.get(offset, []), routed.get(offset, [])))
            if offset in failed:
                out.append(self._bad(record, run[offset], first + offset, count, failed[offset]))
        return out

    def _emits(self, alerts: list[dict], requests: list[dict]) -> list[Emit]:
        out = []
        for alert in alerts:
            body = DriftAlert.model_validate(alert).to_json()
            self.alerts.append(body)
            out.append(Emit("drift-alerts", alert["model"].encode(), body))
        for request in requests:
            out.append(Emit("review-queue", request["prediction_id"].encode(),
                            ReviewRequest.model_validate(request).to_json()))
        return out

    def _dead(self, record: Record, payload: bytes | None, reason: str) -> Emit:
        letter = dead_letter(source_topic=record.topic, partition=record.partition, offset=record.offset,
                             key=record.key, payload=payload, reason=reason)
        return Emit("dead-letters", record.key, letter.to_json())

    def _observe(self, obs: dict) -> list[Emit]:
        updates = self._learn(obs)
        if obs["k"] == "c":
            return self._updates(updates)
        ident = (obs["m"], obs["v"])
        monitor = self.monitors.get(ident)
        if monitor is None:
            monitor = self.monitors[ident] = ModelMonitor(obs["m"], obs["v"], self.config, self.epoch)
        raised = monitor.observe(obs)
        requests = self._route(ident, obs, raised)
        self._dirty.add(ident)
        return self._emits(raised, requests) + self._updates(updates)

    def _learn(self, obs: dict) -> list[dict]:
        """Feed the model's learner, if it has one; a shadow prediction joins the observation."""
        config = self.learning.get(obs["m"])
        if config is None:
            return []
        learner = self.learners.get(obs["m"])
        if learner is None:
            learner = self.learners[obs["m"]] = ModelLearner(obs["m"], config)
        self._dirty_learners.add(obs["m"])
        if obs["k"] == "p":
            shadow = learner.on_prediction(obs)
            if shadow is not None and "sh" not in obs:
                obs["sh"] = shadow
            return []
        if obs["k"] == "c":
            return learner.on_control(obs)
        return learner.on_outcome(obs)

    def _updates(self, updates: list[dict]) -> list[Emit]:
        out = []
        for update in updates:
            self.champion_changes.append((update["model"], update["version"], update["previous_version"],
                                          update["action"]))
            out.append(Emit("model-updates", update["model"].encode(), ModelUpdate.model_validate(update).to_json()))
        return out

    def finish(self, now: float) -> list[Emit]:
        """End a batch of :meth:`apply` calls at wall time ``now``: the registry versions due
        (written before the batch is published), announced as updates."""
        out = []
        for model in sorted(self._dirty_learners):
            learner = self.learners[model]
            for name, version, estimator, updates in learner.due_checkpoints(now):
                self.registry_saves.append((model, name, version, estimator, updates))
                metrics = learner.report()["challengers"][name]
                update = ModelUpdate(model=model, action="checkpoint", version=version, at=utc_iso(now),
                                     evidence={"name": name, "updates": updates, **metrics})
                out.append(Emit("model-updates", model.encode(), update.to_json()))
        return out

    def _route(self, ident: tuple[str, str], obs: dict, raised: list[dict]) -> list[dict]:
        if self.routing is None:
            return []
        router = self.routers.get(ident)
        if router is None:
            router = self.routers[ident] = Router(ident[0], ident[1], self.routing)
        if any(alert["status"] == "firing" for alert in raised):
            router.on_alert()
        return router.on_prediction(obs) if obs["k"] == "p" else router.on_outcome(obs)

    def apply_all(self, records: list[Record], now: float = 0.0) -> list[Emit]:
        """:meth:`apply` each record in turn, then :meth:`finish` the batch."""
        out: list[Emit] = []
        for record in records:
            out.extend(self.apply(record))
        return out + self.finish(now)

    def changes(self, signer: Signer) -> MonitorChanges:
        """What to store: dirty monitors, references that just completed, estimates, offsets, alerts."""
        monitors, references, estimates, routers = {}, {}, {}, {}
        for ident in self._dirty:
            monitor = self.monitors[ident]
            field_name = SEPARATOR.join(ident).encode()
            monitors[field_name] = monitor.to_bytes(signer)
            if ident in self.routers:
                routers[field_name] = signer.dumps(self.routers[ident])
            if self._references_saved.get(ident) != monitor.references_state():
                references[field_name] = monitor.references_bytes()
            if monitor.last_estimate is not None:
                estimates[field_name] = orjson.dumps({**monitor.last_estimate, "baseline": monitor.baseline})
        learners = {model.encode(): signer.dumps(self.learners[model]) for model in self._dirty_learners}
        reports = {model.encode(): orjson.dumps(self.learners[model].report()) for model in self._dirty_learners}
        return MonitorChanges(monitors, references, estimates, {"offsets": orjson.dumps(self.offsets)},
                              list(self.alerts), routers, learners, reports)

    def mark_clean(self) -> None:
        for ident in self._dirty:
            self._references_saved[ident] = self.monitors[ident].references_state()
        self._dirty.clear()
        self._dirty_learners.clear()
        self.alerts.clear()

    def restore(self, monitors: dict[bytes, bytes], references: dict[bytes, bytes], meta: dict[bytes, bytes],
                signer: Signer, routers: dict[bytes, bytes] | None = None,
                learners: dict[bytes, bytes] | None = None) -> None:
        for field_name, raw in monitors.items():
            monitor, refused = ModelMonitor.from_bytes(raw, self.config, signer, references.get(field_name))
            if refused is not None:
                log.error("drift detector of %s %s not restored, starting afresh: %s",
                          monitor.model, monitor.version, refused)
            self.monitors[(monitor.model, monitor.version)] = monitor
            self._references_saved[(monitor.model, monitor.version)] = monitor.references_state()
        for field_name, raw in (routers or {}).items() if self.routing is not None else ():
            model, version = field_name.decode().split(SEPARATOR, 1)
            try:
                router = signer.loads(raw)
            except CheckpointIntegrityError as exc:
                log.error("review router of %s %s not restored, starting afresh: %s", model, version, exc)
                continue
            router.config = self.routing
            router.gate.budget_per_hour = self.routing.budget_for(model)
            router.gate.burst = self.routing.burst
            self.routers[(model, version)] = router
        for raw_model, raw in (learners or {}).items():
            model = raw_model.decode()
            if model not in self.learning:
                continue
            try:
                learner = signer.loads(raw)
            except CheckpointIntegrityError as exc:
                log.error("online learners of %s not restored from the partition checkpoint: %s", model, exc)
                self.refused_learners.append(model)
                continue
            learner.config = self.learning[model]
            self.learners[model] = learner
        if b"offsets" in meta:
            self.offsets = orjson.loads(meta[b"offsets"])

