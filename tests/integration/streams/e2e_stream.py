"""A seeded, realistic, messy stream of predictions, labels and reviewer verdicts.

:func:`generate` returns the raw messages in the order they are to be produced (a causal
shuffle: each event is emitted at its event time plus transport jitter, some predictions are held
back so their labels overtake them, relabels and duplicates come later), each message marked with
what a dead letter for it must say when it is malformed. Nothing here imports ``streams``: the
messages are plain JSON bytes, and :mod:`e2e_reference` computes the expected results from them.

Models (two versions each):

* ``churn``   string classes ``yes``/``no``, scores on most predictions;
* ``fraud``   int classes 0/1/2, scores keyed ``"0"``..``"2"`` (sometimes missing the true class),
  labels sent as ints or as strings (``"1"`` confirms ``1``);
* ``approve`` bool classes, labels as bools or as ``"true"``/``"false"`` text (and rarely a
  wrongly capitalised ``"True"``, which is a different class);
* ``eta``     regression (float predictions, float or int labels).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=timezone.utc)
MINUTE = 60.0

MODELS: dict[str, dict[str, Any]] = {
    "churn": {"kind": "str", "versions": ["2026-11-01", "2026-11-15"], "classes": ["yes", "no"]},
    "fraud": {"kind": "int", "versions": ["v1", "v2"], "classes": [0, 1, 2]},
    "approve": {"kind": "bool", "versions": ["a-1", "a-2"], "classes": [True, False]},
    "eta": {"kind": "float", "versions": ["r1", "r2"]},
}
REGIONS = ["eu", "us", "apac"]
CHANNELS = ["web", "app"]
REVIEWERS = ["ana", "bo", "chen", "dara"]
SOURCES = ["crm-export", "manual", "batch-etl"]

#: Fates of a prediction's truth, with their weights.
FATES = {
    "none": 10,
    "label": 44,
    "label_early": 7,          # the label is emitted before its prediction
    "label_dup": 5,            # the same label message twice
    "label_agree2": 3,         # a second label, other source, later, same class
    "relabel": 4,              # a second label that disagrees
    "relabel3": 1,             # a -> b -> a
    "review_correct": 5,
    "review_error_fix": 4,     # "error" with a corrected label
    "review_error_unknown": 3,  # "error" without a corrected label
    "review_twice": 2,         # two verdicts, the last wins
    "review_label_disagree": 4,  # verdict, then a ground-truth label that disagrees with it
    "review_label_agree": 3,   # verdict, then a ground-truth label that agrees with it
    "label_review": 1,         # label, then a verdict (ignored: labels outrank)
}


@dataclass
class Msg:
    """One message to produce; ``bad`` is set on the malformed ones."""

    kind: str                   # "predictions" | "labels" | "review-flags"
    key: bytes | None
    value: bytes | None
    emit: float = 0.0           # seconds after T0 the message is emitted (ordering only)
    partition: int | None = None
    bad: str | None = None      # malformation category
    reason_has: tuple[str, ...] = ()  # words the dead letter's reason must contain (any case)
    pid: str = ""


@dataclass
class Stream:
    messages: list[Msg]
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def bad(self) -> list[Msg]:
        return [m for m in self.messages if m.bad]


def class_text(value: Any) -> str:
    """Canonical text of a class label (``True`` -> ``"true"``, ``1`` -> ``"1"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def fmt_ts(dt: datetime, rng: random.Random) -> str:
    """ISO-8601 with a zone, in one of the spellings producers use."""
    r = rng.random()
    if r < 0.6:
        return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    if r < 0.8:
        return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    if r < 0.9:
        return dt.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")
    return dt.astimezone(timezone(timedelta(hours=-5, minutes=-30))).isoformat(timespec="milliseconds")


def at(seconds: float) -> datetime:
    """T0 + seconds, to the millisecond."""
    return T0 + timedelta(milliseconds=round(seconds * 1000))


def dumps(obj: Any, rng: random.Random) -> bytes:
    if rng.random() < 0.1:
        return json.dumps(obj, indent=1).encode()
    return json.dumps(obj, separators=(",", ":") if rng.random() < 0.5 else (", ", ": ")).encode()


#: Fates whose final outcome a join may only get right if it does not depend on how it interleaves
#: the three input topics: truths that agree with each other but differ in time, spelling or source.
ORDER_SENSITIVE_FATES = ("label_agree2", "review_label_agree")


class _Gen:
    def __init__(self, seed: int, n_predictions: int, max_event_bytes: int, order_sensitive: bool = True) -> None:
        self.order_sensitive = order_sensitive
        self.rng = random.Random(seed)
        self.n = n_predictions
        self.max_bytes = max_event_bytes
        self.msgs: list[Msg] = []
        self.preds: dict[str, dict[str, Any]] = {}   # valid predictions by id
        self.pred_msgs: dict[str, Msg] = {}
        self.truth_msgs: list[Msg] = []
        self.stats: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    # ------------------------------------------------------------------ events
    def add(self, kind: str, obj: dict[str, Any] | None, emit: float, *, raw: bytes | None = None,
            key: bytes | None | str = "pid", bad: str | None = None, reason_has: tuple[str, ...] = ()) -> Msg:
        pid = (obj or {}).get("prediction_id", "")
        value = raw if raw is not None or obj is None else dumps(obj, self.rng)
        k = pid.encode() if key == "pid" else key
        msg = Msg(kind, k, value, emit, bad=bad, reason_has=reason_has, pid=str(pid))
        self.msgs.append(msg)
        return msg

    def features(self) -> dict[str, Any]:
        r = self.rng
        f: dict[str, Any] = {"age": r.randint(18, 90), "plan": r.choice(["free", "pro", "team"]),
                             "tenure_days": round(r.uniform(0, 2000), 1)}
        if r.random() < 0.3:
            f["country"] = r.choice(["DE", "FR", "US", "JP", "IN"])
        if r.random() < 0.1:
            f["history"] = [r.randint(0, 9) for _ in range(r.randint(1, 5))]
        return f

    def prediction(self, pid: str, ts: datetime) -> dict[str, Any]:
        r = self.rng
        model = r.choice(list(MODELS))
        spec = MODELS[model]
        version = spec["versions"][0] if r.random() < 0.6 else spec["versions"][1]
        obj: dict[str, Any] = {"prediction_id": pid, "model": model, "model_version": version,
                               "timestamp": fmt_ts(ts, r), "features": self.features()}
        if spec["kind"] == "float":
            obj["prediction"] = float(round(r.uniform(1, 120), 3))
        else:
            classes = spec["classes"]
            probs = [r.random() + 0.05 for _ in classes]
            total = sum(probs)
            probs = [round(p / total, 4) for p in probs]
            best = max(range(len(classes)), key=lambda i: probs[i])
            obj["prediction"] = classes[best]
            if spec["kind"] == "str" and r.random() < 0.9 or spec["kind"] != "str" and r.random() < 0.6:
                scores = {class_text(c): p for c, p in zip(classes, probs)}
                if spec["kind"] == "int" and r.random() < 0.3:  # top-2 only: the truth may be missing
                    worst = min(scores, key=scores.get)
                    del scores[worst]
                if r.random() < 0.01:
                    scores = {}
                obj["scores"] = scores
                if r.random() < 0.3:
                    obj["confidence"] = probs[best]
        tags: dict[str, str] = {}
        if r.random() < 0.95:
            tags["region"] = r.choice(REGIONS)
        if r.random() < 0.3:
            tags["channel"] = r.choice(CHANNELS)
        if tags or r.random() < 0.5:
            obj["tags"] = tags
        if r.random() < 0.05:
            obj["trace_id"] = f"{r.getrandbits(64):016x}"  # extra field: allowed
        return obj

    def truth_value(self, pred: dict[str, Any], *, agree: bool | None = None) -> Any:
        """A true class (as the model would encode it) or value for ``pred``."""
        r = self.rng
        spec = MODELS[pred["model"]]
        if spec["kind"] == "float":
            return float(round(pred["prediction"] + r.gauss(0, 8), 3))
        right = r.random() < 0.8 if agree is None else agree
        if right:
            return pred["prediction"]
        return r.choice([c for c in spec["classes"] if class_text(c) != class_text(pred["prediction"])])

    def other_value(self, pred: dict[str, Any], value: Any) -> Any:
        """A truth that disagrees with ``value``."""
        spec = MODELS[pred["model"]]
        if spec["kind"] == "float":
            return float(round(value + self.rng.choice([-1, 1]) * self.rng.uniform(1, 20), 3))
        return self.rng.choice([c for c in spec["classes"] if class_text(c) != class_text(value)])

    def encode_label(self, pred: dict[str, Any], value: Any, *, allow_int: bool = True) -> Any:
        """How a label source writes a truth: int/bool classes sometimes as text."""
        r = self.rng
        kind = MODELS[pred["model"]]["kind"]
        if kind == "int" and r.random() < 0.3:
            return str(value)
        if kind == "bool":
            x = r.random()
            if x < 0.15:
                return class_text(value)
            if x < 0.17:
                return "True" if value else "False"  # not the canonical text: another class
        if kind == "float" and allow_int and r.random() < 0.05:
            return int(round(value))
        return value

    def label(self, pid: str, pred: dict[str, Any], value: Any, t: float, emit: float | None = None,
              *, allow_int: bool = True) -> Msg:
        r = self.rng
        obj: dict[str, Any] = {"prediction_id": pid, "label": self.encode_label(pred, value, allow_int=allow_int),
                               "timestamp": fmt_ts(at(t), r)}
        if r.random() < 0.8:
            obj["source"] = r.choice(SOURCES)
        msg = self.add("labels", obj, t + r.uniform(0, 3) if emit is None else emit)
        self.truth_msgs.append(msg)
        return msg

    def review(self, pid: str, pred: dict[str, Any], verdict: str, corrected: Any, t: float,
               emit: float | None = None, *, has_corrected: bool = True) -> Msg:
        r = self.rng
        obj: dict[str, Any] = {"prediction_id": pid, "reviewer": r.choice(REVIEWERS), "verdict": verdict,
                               "timestamp": fmt_ts(at(t), r)}
        if has_corrected:
            obj["corrected_label"] = corrected
        elif r.random() < 0.5:
            obj["corrected_label"] = None
        if r.random() < 0.3:
            obj["note"] = r.choice(["customer cancelled", "looks fine", "data entry error", "ünïcødé ✓"])
        msg = self.add("review-flags", obj, t + r.uniform(0, 3) if emit is None else emit)
        self.truth_msgs.append(msg)
        return msg

    def delay(self) -> float:
        return min(45 * MINUTE, self.rng.expovariate(1 / (8 * MINUTE))) + self.rng.uniform(0.5, 5)

    # ------------------------------------------------------------------ the stream
    def build(self) -> Stream:
        r = self.rng
        fates, weights = zip(*((f, w) for f, w in FATES.items()
                               if self.order_sensitive or f not in ORDER_SENSITIVE_FATES))
        boundary = set(r.sample(range(self.n), 3))  # predictions of exactly max_event_bytes bytes
        for i in range(self.n):
            pid = f"p-{i:06d}"
            t = r.uniform(0, 60 * MINUTE)
            pred = self.prediction(pid, at(t))
            fate = r.choices(fates, weights)[0]
            self.count(f"fate:{fate}")
            emit = t + r.uniform(0, 2)
            if fate == "label_early":
                emit = t + r.uniform(10, 30) * MINUTE  # held back: its label overtakes it
            raw = None
            if i in boundary:
                raw = self.pad_to(pred, self.max_bytes)
                self.count("boundary_size_predictions")
            msg = self.add("predictions", pred, emit, raw=raw)
            self.preds[pid] = pred
            self.pred_msgs[pid] = msg
            if r.random() < 0.02:  # an exact duplicate, re-sent later
                self.msgs.append(Msg("predictions", msg.key, msg.value, emit + r.uniform(1, 20) * MINUTE, pid=pid))
                self.count("duplicate_predictions")
            self.truths(pid, pred, fate, t)
        self.orphans()
        self.malformed()
        self.msgs.sort(key=lambda m: m.emit)  # stable: equal emit times keep creation order
        return Stream(self.msgs, self.stats)

    def truths(self, pid: str, pred: dict[str, Any], fate: str, t: float) -> None:
        r = self.rng
        regression = MODELS[pred["model"]]["kind"] == "float"
        if fate == "none":
            return
        if fate in ("label", "label_dup", "label_agree2", "relabel", "relabel3"):
            t1 = t + self.delay()
            value = self.truth_value(pred)
            first = self.label(pid, pred, value, t1, allow_int=fate == "label")
            if fate == "label_dup":
                self.msgs.append(Msg("labels", first.key, first.value, first.emit + r.uniform(1, 600), pid=pid))
            elif fate == "label_agree2":
                v2 = value
                if MODELS[pred["model"]]["kind"] == "int":
                    v2 = class_text(value) if isinstance(value, int) else int(value)  # same class, other type
                t2 = t1 + r.uniform(1, 10) * MINUTE
                obj = {"prediction_id": pid, "label": v2, "timestamp": fmt_ts(at(t2), r), "source": "second-opinion"}
                self.add("labels", obj, t2 + r.uniform(0, 3))
            elif fate in ("relabel", "relabel3"):
                t2 = t1 + r.uniform(1, 10) * MINUTE
                second = self.other_value(pred, value)
                self.label(pid, pred, second, t2, allow_int=False)
                if fate == "relabel3":
                    self.label(pid, pred, value, t2 + r.uniform(1, 5) * MINUTE, allow_int=False)
            return
        if fate == "label_early":
            skew = r.random() < 0.2  # the label source's clock is behind: label before prediction
            t1 = t - r.uniform(1, 60) if skew else t + r.uniform(0.5, 5) * MINUTE
            self.label(pid, pred, self.truth_value(pred), t1)
            return
        tr = t + r.uniform(1, 30) * MINUTE
        if fate == "review_correct":
            self.review(pid, pred, "correct", None, tr, has_corrected=False)
        elif fate == "review_error_fix":
            corrected = self.truth_value(pred, agree=r.random() < 0.1)  # rarely: "error" but same class
            self.review(pid, pred, "error", self.encode_label(pred, corrected, allow_int=False), tr)
        elif fate == "review_error_unknown":
            self.review(pid, pred, "error", None, tr, has_corrected=False)
        elif fate == "review_twice":
            first = r.choice(["correct", "error"])
            self.review(pid, pred, first, None, tr, has_corrected=False)
            second = "error" if first == "correct" else "correct"
            fix = self.other_value(pred, pred["prediction"]) if second == "error" and r.random() < 0.5 else None
            self.review(pid, pred, second, fix, tr + r.uniform(1, 10) * MINUTE, has_corrected=fix is not None)
        elif fate in ("review_label_disagree", "review_label_agree"):
            verdict = r.choice(["correct", "error"])
            if verdict == "correct":
                self.review(pid, pred, verdict, None, tr, has_corrected=False)
                implied = pred["prediction"]
            else:
                implied = self.other_value(pred, pred["prediction"])
                self.review(pid, pred, verdict, implied, tr)
            value = implied if fate == "review_label_agree" else self.other_value(pred, implied)
            self.label(pid, pred, value, tr + r.uniform(1, 20) * MINUTE, allow_int=False)
        elif fate == "label_review":
            t1 = t + self.delay()
            value = self.truth_value(pred)
            self.label(pid, pred, value, t1, allow_int=False)
            verdict = r.choice(["correct", "error"])
            if not self.order_sensitive:  # a verdict that disagrees with the label
                right = not regression and class_text(value) == class_text(pred["prediction"])
                verdict = "error" if right or regression else "correct"
            self.review(pid, pred, verdict, None, t1 + r.uniform(1, 10) * MINUTE, has_corrected=False)
        if regression:
            self.count("regression_reviews")

    def orphans(self) -> None:
        """Truth for predictions that never arrive."""
        r = self.rng
        n = max(10, self.n // 60)
        for i in range(n):
            pid = f"o-{i:05d}"
            t = r.uniform(0, 100 * MINUTE)
            if i % 6 == 5:
                obj = {"prediction_id": pid, "reviewer": r.choice(REVIEWERS), "verdict": "correct",
                       "timestamp": fmt_ts(at(t), r)}
                self.add("review-flags", obj, t + r.uniform(0, 3))
                self.count("orphan_reviews")
                continue
            for j in range(1 if r.random() < 0.8 else 2):
                obj = {"prediction_id": pid, "label": r.choice(["yes", "no", 1, True, 3.5]),
                       "timestamp": fmt_ts(at(t + j * 60), r)}
                self.add("labels", obj, t + j * 60 + r.uniform(0, 3))
            self.count("orphan_ids")

    # ------------------------------------------------------------------ malformed messages
    def pad_to(self, obj: dict[str, Any], size: int) -> bytes:
        """``obj`` as JSON of exactly ``size`` bytes (a padding feature or note)."""
        obj = json.loads(json.dumps(obj))
        slot = obj.setdefault("features", {}) if "features" in obj else obj
        name = "padding" if "features" in obj else "note"
        slot[name] = ""
        base = len(json.dumps(obj, separators=(",", ":")).encode())
        slot[name] = "x" * (size - base)
        raw = json.dumps(obj, separators=(",", ":")).encode()
        assert len(raw) == size, (len(raw), size)
        return raw

    def malformed(self) -> None:
        r = self.rng
        valid_total = len(self.msgs)
        target = max(40, valid_total // 100)
        pids = list(self.preds)
        kinds = ["predictions", "labels", "review-flags"]
        made = 0

        def sample_obj(kind: str, pid: str) -> dict[str, Any]:
            pred = self.preds.get(pid) or self.prediction(pid, at(r.uniform(0, 60 * MINUTE)))
            if kind == "predictions":
                return json.loads(json.dumps(pred))
            if kind == "labels":
                return {"prediction_id": pid, "label": self.truth_value(pred),
                        "timestamp": fmt_ts(at(r.uniform(0, 100 * MINUTE)), r), "source": "bad-batch"}
            return {"prediction_id": pid, "reviewer": r.choice(REVIEWERS), "verdict": "correct",
                    "timestamp": fmt_ts(at(r.uniform(0, 100 * MINUTE)), r)}

        def emit() -> float:
            return r.uniform(0, 110 * MINUTE)

        required = {"predictions": ["prediction_id", "model", "model_version", "timestamp", "features", "prediction"],
                    "labels": ["label", "timestamp", "prediction_id"],
                    "review-flags": ["reviewer", "verdict", "timestamp"]}
        wrong_types = {
            "predictions": [("features", ["a", "b"]), ("prediction", {"cls": "yes"}), ("tags", {"region": 7}),
                            ("scores", {"yes": 1.7, "no": -0.7}), ("model", 42), ("confidence", "high"),
                            ("prediction", None)],
            "labels": [("label", {"value": "yes"}), ("label", None), ("label", [1, 2]), ("source", 17),
                       ("timestamp", "yesterday")],
            "review-flags": [("verdict", "maybe"), ("reviewer", ""), ("corrected_label", ["yes"]),
                             ("timestamp", "2026-13-45T99:00:00Z")],
        }
        plan = (["invalid_json"] * 18 + ["missing_field"] * 16 + ["wrong_type"] * 18 + ["naive_timestamp"] * 12
                + ["key_mismatch"] * 12 + ["no_key"] * 3 + ["oversized"] * 5 + ["conflict"] * 12
                + ["tombstone"] * 2 + ["not_object"] * 2)
        while made < target:
            what = r.choice(plan)
            kind = "predictions" if what == "conflict" else r.choice(kinds)
            real = r.random() < 0.5  # about a real prediction id, or a fresh one
            pid = r.choice(pids) if real or what == "conflict" else f"x-{made:05d}"
            obj = sample_obj(kind, pid)
            t = emit()
            if what == "invalid_json":
                good = json.dumps(obj).encode()
                raw = r.choice([good[: r.randint(1, len(good) - 2)], b"{'prediction_id': 'p'}",
                                b"not json at all", b"\xff\xfe\x00garbage", good + b"}"])
                self.add(kind, None, t, raw=raw, key=pid.encode(), bad=what, reason_has=("json",))
            elif what == "missing_field":
                name = r.choice(required[kind])
                del obj[name]
                self.add(kind, obj, t, key=pid.encode(), bad=what, reason_has=(name,))
            elif what == "wrong_type":
                name, value = r.choice(wrong_types[kind])
                obj[name] = value
                self.add(kind, obj, t, key=pid.encode(), bad=what, reason_has=(name,))
            elif what == "naive_timestamp":
                obj["timestamp"] = at(r.uniform(0, 60 * MINUTE)).replace(tzinfo=None).isoformat(timespec="milliseconds")
                self.add(kind, obj, t, key=pid.encode(), bad=what, reason_has=("timestamp",))
            elif what == "key_mismatch":
                other = r.choice([x for x in r.sample(pids, 2) if x != pid])
                self.add(kind, obj, t, key=(other + "-x").encode() if r.random() < 0.5 else other.encode(),
                         bad=what, reason_has=("key",))
            elif what == "no_key":
                self.add(kind, obj, t, key=None, bad=what, reason_has=("key",))
            elif what == "oversized":
                raw = self.pad_to(obj, self.max_bytes + r.choice([1, 2, 500, 3000]))
                self.add(kind, None, t, raw=raw, key=pid.encode(), bad=what, reason_has=("max_event_bytes",))
            elif what == "conflict":
                original = self.pred_msgs[pid]
                obj["prediction"] = self.conflicting(obj)
                obj.pop("scores", None)
                obj.pop("confidence", None)
                self.add(kind, obj, original.emit + r.uniform(0.5, 20) * MINUTE, key=pid.encode(), bad=what,
                         reason_has=("prediction",))
            elif what == "tombstone":
                self.add(kind, None, t, raw=None, key=pid.encode(), bad=what, reason_has=("empty",))
            elif what == "not_object":
                raw = r.choice([b"[1, 2, 3]", b'"just a string"', b"42", b"null"])
                self.add(kind, None, t, raw=raw, key=pid.encode(), bad=what, reason_has=("object",))
            self.count(f"bad:{what}")
            made += 1

    def conflicting(self, pred: dict[str, Any]) -> Any:
        spec = MODELS[pred["model"]]
        if spec["kind"] == "float":
            return float(round(pred["prediction"] + 50.5, 3))
        return self.other_value(pred, pred["prediction"])


def generate(seed: int, n_predictions: int, max_event_bytes: int = 4096, *, order_sensitive: bool = True) -> Stream:
    """The messages of a stream of ``n_predictions`` predictions, in production order.

    ``order_sensitive=False`` leaves out the cases where truths agree with each other but differ
    in time, spelling or source (:data:`ORDER_SENSITIVE_FATES`, and verdicts agreeing with a
    label): their expected outcome is the same, but a join that depends on the interleaving of
    its input topics gets them wrong, which would hide what a test is about.
    """
    stream = _Gen(seed, n_predictions, max_event_bytes, order_sensitive).build()
    too_big = [m for m in stream.messages if not m.bad and m.value is not None and len(m.value) > max_event_bytes]
    assert not too_big, f"generator bug: valid messages over {max_event_bytes} bytes: {too_big[:3]}"
    return stream


def sentinels(partitions: int, model: str = "sentinel") -> list[Msg]:
    """One far-future prediction per partition (explicitly placed): it moves every partition's
    watermark past every TTL, so whatever never joined expires, deterministically."""
    out = []
    for p in range(partitions):
        pid = f"sentinel-p{p}"
        obj = {"prediction_id": pid, "model": model, "model_version": "0",
               "timestamp": (T0 + timedelta(days=30)).isoformat().replace("+00:00", "Z"),
               "features": {}, "prediction": "x"}
        out.append(Msg("predictions", pid.encode(), json.dumps(obj).encode(), partition=p, pid=pid))
    return out
