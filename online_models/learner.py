"""The online learners of one model: challengers trained from outcomes, shadow scoring, and the
champion / challenger decisions (pure logic; the monitor agent calls it, in observation order).

For every prediction observation each challenger makes a **shadow prediction** (kept until the
prediction's first true class arrives). For every outcome that brings a prediction's first true
class (a ground-truth label or a reviewer's corrected label; the join marks it ``lf``) each
challenger is updated **test-then-train**: it predicts the example, the prequential tally records
whether it was right, then it learns the example. Each outcome is learned once: the observation
offsets in the monitor checkpoint make a replayed record a no-op, and the ids of the last
``dedupe_ids`` learned predictions make a republished observation one (the join publishes before it
checkpoints, so a crash between the two republishes a batch).

Two accuracies per challenger, on the same outcomes as the champion's live metrics:

``prequential``
    test-then-train at the time the label is learned (River's ``progressive_val_score`` order);
``shadow``
    of the prediction made when the prediction arrived, before the labels that came meanwhile:
    what serving that model would have scored. Promotion compares these with the champion's own
    predictions, pair by pair (:mod:`online_models.decisions`).

The champion is the producer's own model (an *external* version) until a challenger is promoted;
then it is that challenger, whose served accuracy is its shadow accuracy. Registry versions are
named ``<spec name>-u<updates>``, so a replayed batch names (and overwrites) the same version.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from feedback_loop.events import utc_iso
from online_models import decisions
from online_models.specs import ModelSpec, build

HISTORY_EVERY = 250
HISTORY_MAX = 2000


@dataclass(frozen=True)
class LearnerConfig:
    """Settings of one model's learners (see :class:`feedback_loop.settings.Settings`)."""

    challengers: tuple[tuple[str, ModelSpec], ...] = ()
    window: int = 1000
    alpha: float = 0.01
    min_margin: float = 0.01
    rollback_window: int = 1000
    rollback_margin: float = 0.02
    checkpoint_updates: int = 1000
    checkpoint_seconds: float = 300.0
    max_pending: int = 200_000
    #: event-time seconds a prediction waits for its first label before its shadow record goes
    #: (the join has expired it by then: a later label is an orphan and never comes here)
    pending_ttl: float = float("inf")
    #: ids of the last learned outcomes kept to ignore republished ones: a new owner republishes
    #: one join batch (its outbox); settings keep 50,000 ids (or three ``batch_max``)
    dedupe_ids: int = 6_000


@dataclass
class Tally:
    n: int = 0
    correct: int = 0

    def add(self, ok: bool) -> None:
        self.n += 1
        self.correct += ok

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None


@dataclass
class Champion:
    version: str
    name: str | None = None  # spec name when it is one of the challengers
    previous: str | None = None
    previous_name: str | None = None
    previous_accuracy: float | None = None
    since: deque = field(default_factory=deque)  # its outcomes since promotion (for rollback)




class ModelLearner:
    """Challengers, shadow predictions, tallies and the champion of one model (see module doc)."""

    def __init__(self, model: str, config: LearnerConfig) -> None:
        self.model, self.config = model, config
        self.challengers: dict[str, Any] = {name: build(spec) for name, spec in config.challengers}
        self.updates: dict[str, int] = {name: 0 for name in self.challengers}
        self.prequential = {name: Tally() for name in self.challengers}
        self.shadow = {name: Tally() for name in self.challengers}
        self.served = Tally()
        self.external = Tally()
        self.pairs: dict[str, deque[tuple[bool, bool]]] = {
            name: deque(maxlen=config.window) for name in self.challengers}
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.learned_ids: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0
        self.predictions = 0
        #: ``[predicted_at, served outcomes, served correct]`` every ``HISTORY_EVERY`` served outcomes
        self.history: list[list[float]] = []
        self.champion: Champion | None = None
        self.checkpointed: dict[str, tuple[int, float]] = {name: (0, 0.0) for name in self.challengers}
        self.due: list[str] = []
        self.ready: list[tuple[str, str, Any, int]] = []
        self.decisions: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ observations
    def on_prediction(self, obs: dict[str, Any]) -> dict[str, Any] | None:
        """Shadow-score a prediction; return the first challenger's ``{"y", "c"}`` for routing."""
        if not self.challengers or isinstance(obs["y"], float) or obs["id"] in self.learned_ids:
            return None
        if self.champion is None:
            self.champion = Champion(version=str(obs["v"]))
        x = obs.get("x") or {}
        shadows: dict[str, Any] = {}
        offered: dict[str, dict[str, Any]] = {}
        for name, model in self.challengers.items():
            proba = model.predict_proba_one(x)
            y = max(proba, key=proba.get) if proba else model.predict_one(x)
            shadows[name] = None if y is None else str(y)
            if y is not None:
                offered[name] = {"y": str(y), "c": float(proba.get(y, 0.0)) if proba else None}
        self.pending[obs["id"]] = {"s": shadows, "p": str(obs["y"]), "t": obs["t"]}
        self.predictions += 1
        while len(self.pending) > self.config.max_pending:
            self.pending.popitem(last=False)
        horizon = obs["t"] - self.config.pending_ttl  # records are in arrival order, about event order
        while self.pending and next(iter(self.pending.values()))["t"] < horizon:
            self.pending.popitem(last=False)
        # The second opinion for review routing: the best challenger that is not serving already.
        rivals = [n for n in offered if self.champion.name != n]
        if not rivals:
            return None
        best = max(rivals, key=lambda n: (self.shadow[n].accuracy or 0.0, -list(self.challengers).index(n)))
        return offered[best]

    def on_outcome(self, obs: dict[str, Any]) -> list[dict[str, Any]]:
        """Learn an outcome that brings a first true class; return any promotion or rollback."""
        if not self.challengers or not obs.get("lf") or obs.get("l") is None or isinstance(obs.get("y"), float):
            return []
        label, x = str(obs["l"]), obs.get("x") or {}
        if obs["id"] in self.learned_ids:
            self.duplicates += 1
            return []
        self.learned_ids[obs["id"]] = None
        while len(self.learned_ids) > self.config.dedupe_ids:
            self.learned_ids.popitem(last=False)
        for name, model in self.challengers.items():
            guess = model.predict_one(x)
            self.prequential[name].add(guess is not None and str(guess) == label)
            model.learn_one(x, label)
            self.updates[name] += 1
            done, _ = self.checkpointed[name]
            if self.updates[name] - done >= self.config.checkpoint_updates and name not in self.due:
                self.due.append(name)
        pending = self.pending.pop(obs["id"], None)
        if pending is None:
            return []  # predicted before the learners existed (or evicted): no fair pair
        production_ok = pending["p"] == label
        self.external.add(production_ok)
        if self.champion is None:
            self.champion = Champion(version=str(obs["v"]))
        champ = self.champion
        champion_ok = production_ok if champ.name is None else pending["s"].get(champ.name) == label
        self.served.add(champion_ok)
        if self.served.n % HISTORY_EVERY == 0:
            self.history.append([pending.get("t", obs.get("pt", 0.0)), self.served.n, self.served.correct])
            if len(self.history) > HISTORY_MAX:
                self.history = self.history[::2]
        for name, shadow in pending["s"].items():
            ok = shadow == label
            self.shadow[name].add(ok)
            if name != champ.name:
                self.pairs[name].append((champion_ok, ok))
        return self._decide(champion_ok, obs["t"])

    def on_control(self, obs: dict[str, Any]) -> list[dict[str, Any]]:
        """A decision made by hand (``feedback-loop models promote/rollback``)."""
        action, version = obs["action"], str(obs["version"])
        name = obs.get("name")
        if action == "promote":
            return [self._promote(version, name if name in self.challengers else None, obs["t"],
                                  {"by": "hand", "reason": obs.get("reason", "")}, snapshot=False)]
        if action == "rollback" and self.champion is not None and self.champion.previous is not None:
            return [self._rollback(obs["t"], {"by": "hand", "reason": obs.get("reason", "")})]
        return []

    # ------------------------------------------------------------------ decisions
    def _decide(self, champion_ok: bool, t: float) -> list[dict[str, Any]]:
        champ = self.champion
        assert champ is not None
        if champ.previous is not None and champ.previous_accuracy is not None:
            champ.since.append(champion_ok)
            if len(champ.since) >= self.config.rollback_window:
                evidence = decisions.rollback_evidence(champ.since, champ.previous_accuracy, self.config.alpha,
                                                       self.config.rollback_margin)
                if evidence["rollback"]:
                    return [self._rollback(t, evidence)]
                champ.previous_accuracy = None  # it held up: keep it, stop watching
        best: tuple[float, str, dict[str, Any]] | None = None
        for name, pairs in self.pairs.items():
            if name == champ.name or len(pairs) < self.config.window:
                continue
            evidence = decisions.promote_evidence(pairs, self.config.alpha, self.config.min_margin)
            if evidence["promote"] and (best is None or evidence["margin"] > best[0]):
                best = (evidence["margin"], name, evidence)
        if best is None:
            return []
        _, name, evidence = best
        return [self._promote(self.version_of(name), name, t, evidence)]

    def version_of(self, name: str) -> str:
        return f"{name}-u{self.updates[name]}"

    def _promote(self, version: str, name: str | None, t: float, evidence: dict[str, Any],
                 snapshot: bool = True) -> dict[str, Any]:
        """Make ``version`` the champion; a decision of the tests snapshots the challenger as it is
        (a promotion by hand names a version already in the registry)."""
        old = self.champion or Champion(version=version)
        previous_accuracy = evidence.get("champion_accuracy")
        self.champion = Champion(version, name, old.version, old.name, previous_accuracy)
        for pairs in self.pairs.values():
            pairs.clear()
        if name is not None and snapshot:  # the handles load this version: snapshot it as promoted
            self.ready.append((name, version, copy.deepcopy(self.challengers[name]), self.updates[name]))
        return self._update("promote", version, old.version, t, evidence)

    def _rollback(self, t: float, evidence: dict[str, Any]) -> dict[str, Any]:
        old = self.champion
        assert old is not None and old.previous is not None
        self.champion = Champion(old.previous, old.previous_name)
        for pairs in self.pairs.values():
            pairs.clear()
        return self._update("rollback", old.previous, old.version, t, evidence)

    def _update(self, action: str, version: str, previous: str | None, t: float,
                evidence: dict[str, Any]) -> dict[str, Any]:
        update = {"model": self.model, "action": action, "version": version, "previous_version": previous,
                  "evidence": {**evidence, "updates": dict(self.updates)}, "at": utc_iso(t)}
        self.decisions.append(update)
        return update

    # ------------------------------------------------------------------ registry checkpoints
    def due_checkpoints(self, now: float) -> list[tuple[str, str, Any, int]]:
        """``(name, version, estimator copy, updates)`` to write to the registry now: every
        ``checkpoint_updates`` updates, every ``checkpoint_seconds`` of wall time with new updates,
        and a promoted challenger as it was when promoted."""
        for name in self.challengers:
            done, at = self.checkpointed[name]
            if self.updates[name] > done and now - at >= self.config.checkpoint_seconds and name not in self.due:
                self.due.append(name)
        out = list(self.ready)
        for name in self.due:
            out.append((name, self.version_of(name), copy.deepcopy(self.challengers[name]), self.updates[name]))
        for name, _, _, updates in out:
            self.checkpointed[name] = (max(updates, self.checkpointed[name][0]), now)
        self.due.clear()
        self.ready.clear()
        return out

    def report(self) -> dict[str, Any]:
        """Tallies and the champion, for snapshots and benchmarks."""
        champ = self.champion
        return {"model": self.model, "champion": None if champ is None else champ.version,
                "champion_name": None if champ is None else champ.name,
                "served_accuracy": self.served.accuracy, "served": self.served.n,
                "external_accuracy": self.external.accuracy,
                "challengers": {name: {"updates": self.updates[name],
                                       "prequential_accuracy": self.prequential[name].accuracy,
                                       "prequential_n": self.prequential[name].n,
                                       "shadow_accuracy": self.shadow[name].accuracy,
                                       "shadow_n": self.shadow[name].n} for name in self.challengers},
                "decisions": len(self.decisions), "duplicates_ignored": self.duplicates,
                "predictions": self.predictions, "history": self.history,
                "updates": [{k: u[k] for k in ("action", "version", "previous_version", "at")}
                            for u in self.decisions]}


def learner_configs(settings: Any) -> dict[str, LearnerConfig]:
    """One :class:`LearnerConfig` per model named in ``settings.online_models``; bad spec names or
    parameters fail here, at startup."""
    from online_models.specs import check_settings

    resolved = check_settings(settings)
    return {model: LearnerConfig(tuple(challengers), settings.promotion_window, settings.promotion_alpha,
                                 settings.promotion_min_margin, settings.rollback_window,
                                 settings.rollback_margin, settings.registry_checkpoint_updates,
                                 settings.registry_checkpoint_seconds, dedupe_ids=max(3 * settings.batch_max, 50_000),
                                 # twice the TTL: each join partition has its own watermark
                                 pending_ttl=2 * settings.prediction_ttl_seconds)
            for model, challengers in resolved.items()}
