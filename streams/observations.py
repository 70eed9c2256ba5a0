"""Compact observations for the drift monitor, on the internal ``monitor-input`` topic.

The join agent owns partitions by ``prediction_id``; drift detection, review routing and online
learning need every observation of one model in one place and in order. So the join publishes, per
new prediction and per outcome revision, a small JSON record keyed by model, and the monitor agent
consumes that topic (monitors and routers per model version, learners per model).

A batch's observations of one model travel together: :func:`pack` joins them into one message
whose value is a JSON array (at most :data:`PACK_MAX` observations or :data:`PACK_MAX_BYTES`
bytes), so the monitor pays the broker and the stream machinery once per batch and model rather
than once per event. A single JSON object (a control record of ``feedback-loop models``) is read
as one observation.

A new prediction's observation is compact (:func:`waiting_observation`): its time and the event's
own bytes, which the join validated and does not encode again; :func:`read` expands it into the
full form :func:`prediction_observation` writes for the other predictions (a re-sent one, one
decoded by pydantic).

Examples
--------
>>> key, value = outcome_observation("p-1", "m", "1", 10.0, 20.0, True, 0.8, 1)
>>> key
b'm'
>>> decode(value)["ok"]
True
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from operator import add
from typing import Any, Iterable

import msgspec
import orjson

from feedback_loop.events import json_bytes
from streams.join import class_key

SEPARATOR = "\x1f"
#: Most observations, and about the most bytes, in one packed ``monitor-input`` message.
PACK_MAX = 500
PACK_MAX_BYTES = 256 * 1024


def monitor_key(model: str, version: str) -> bytes:
    """Observations are keyed by model: every version of a model, and the model's online learners,
    see its observations in one partition, in order."""
    return model.encode()


def prediction_observation(prediction_id: str, model: str, version: str, predicted_at: float,
                           features: dict[str, Any], prediction: Any, confidence: float | None,
                           scores: dict[str, float] | None = None, tags: dict[str, str] | None = None,
                           labeled: bool = False, challenger: Any = None) -> tuple[bytes, bytes]:
    """A new prediction: its features, predicted value, confidence and scores; ``labeled`` when
    its truth was already known on arrival; ``challenger`` a shadow prediction, if the producer
    sent one (``{"prediction": ..., "confidence": ...}``)."""
    obs: dict[str, Any] = {"k": "p", "m": model, "v": version, "id": prediction_id, "t": predicted_at,
                           "x": features, "y": prediction, "c": confidence}
    if scores:
        obs["s"] = scores
    if tags:
        obs["tg"] = tags
    if labeled:
        obs["lab"] = True
    if isinstance(challenger, dict) and "prediction" in challenger:
        obs["sh"] = {"y": challenger["prediction"], "c": challenger.get("confidence")}
    return monitor_key(model, version), json_bytes(obs)


def outcome_observation(prediction_id: str, model: str, version: str, predicted_at: float,
                        labeled_at: float, correct: bool | None, confidence: float | None,
                        revision: int, label: Any = None, source: str = "label",
                        features: dict[str, Any] | None = None, prediction: Any = None,
                        scores: dict[str, float] | None = None,
                        first_label: bool = False) -> tuple[bytes, bytes]:
    """An outcome revision: whether the prediction was right, the confidence it had, the true
    class (``label``, canonical text; ``None`` when unknown) and its source, the prediction's
    features, and ``first_label`` when this revision is the first to know the true class."""
    obs: dict[str, Any] = {"k": "o", "m": model, "v": version, "id": prediction_id, "t": labeled_at,
                           "pt": predicted_at, "ok": correct, "c": confidence, "r": revision,
                           "l": label, "src": source, "y": prediction}
    if features:
        obs["x"] = features
    if scores:
        obs["s"] = scores
    if first_label:
        obs["lf"] = True
    return monitor_key(model, version), json_bytes(obs)


def waiting_observation(predicted_at: float, raw: bytes) -> bytes:
    """A new prediction's observation in compact form: its time and its event's own bytes, as
    the join received and validated them (no re-encoding). :func:`unpack` expands it into what
    :func:`prediction_observation` makes of the same event.

    >>> raw = (b'{"prediction_id":"p-1","model":"m","model_version":"1","timestamp":"2026-11-22T10:00:00Z",'
    ...        b'"features":{"a":1},"prediction":true,"scores":{"true":0.75,"false":0.25},"tags":{"r":"eu"}}')
    >>> waiting_observation(1795346400.0, raw)[:40]
    b'{"k":"P","t":1795346400.0,"e":{"predicti'
    >>> unpack(waiting_observation(1795346400.0, raw)) == [decode(prediction_observation(
    ...     "p-1", "m", "1", 1795346400.0, {"a": 1}, "true", 0.75, {"true": 0.75, "false": 0.25}, {"r": "eu"})[1])]
    True
    """
    return b'{"k":"P","t":%b,"e":%b}' % (orjson.dumps(predicted_at), raw)


def expand(obs: dict[str, Any]) -> dict[str, Any]:
    """A compact prediction observation (:func:`waiting_observation`) as
    :func:`prediction_observation` writes it; any other observation as it is."""
    if obs.get("k") != "P":
        return obs
    event = obs["e"]
    prediction = event["prediction"]
    regression = type(prediction) is float
    value = prediction if regression else class_key(prediction)
    scores = event.get("scores")
    confidence = event.get("confidence")
    if confidence is None and scores and not regression:
        confidence = scores.get(value)
    out: dict[str, Any] = {"k": "p", "m": event["model"], "v": event["model_version"], "id": event["prediction_id"],
                           "t": obs["t"], "x": event["features"], "y": value,
                           "c": float(confidence) if type(confidence) is int else confidence}
    if scores:
        out["s"] = scores
    tags = event.get("tags")
    if tags:
        out["tg"] = tags
    challenger = event.get("challenger")
    if isinstance(challenger, dict) and "prediction" in challenger:
        out["sh"] = {"y": challenger["prediction"], "c": challenger.get("confidence")}
    return out


def decode(raw: bytes) -> dict[str, Any]:
    return orjson.loads(raw)


def pack(emits: Iterable[Any], kind: str = "monitor-input") -> list[Any]:
    """The same messages with each key's ``kind`` values joined into JSON arrays, in order.

    ``emits`` are :class:`streams.partition.Emit`; other kinds pass through unchanged and first.
    Within a key the observations keep their order (one key, one partition of the topic).

    Examples
    --------
    >>> from streams.partition import Emit
    >>> out = pack([Emit("monitor-input", b"a", b'{"n":1}'), Emit("outcomes", b"x", b"{}"),
    ...             Emit("monitor-input", b"b", b'{"n":2}'), Emit("monitor-input", b"a", b'{"n":3}')])
    >>> [(e.kind, e.key, e.value) for e in out]  # doctest: +NORMALIZE_WHITESPACE
    [('outcomes', b'x', b'{}'), ('monitor-input', b'a', b'[{"n":1},{"n":3}]'),
     ('monitor-input', b'b', b'[{"n":2}]')]
    """
    return [emit for _, emit in pack_by_partition([(0, emit) for emit in emits], kind)]


def pack_by_partition(emitted: list[tuple[int, Any]], kind: str = "monitor-input") -> list[tuple[frozenset[int], Any]]:
    """:func:`pack` for the messages of several join partitions, each with the partitions it holds.

    ``emitted`` are ``(partition, Emit)`` in the order they were produced; the result is what
    :func:`pack` makes of the emits, each with the set of partitions whose messages it carries (a
    packed observation message carries the observations of every partition of the batch, in the
    order they were produced, so the monitors see them interleaved as they happened).

    Examples
    --------
    >>> from streams.partition import Emit
    >>> out = pack_by_partition([(0, Emit("monitor-input", b"m", b"1")), (1, Emit("outcomes", b"p", b"o")),
    ...                          (1, Emit("monitor-input", b"m", b"2")), (0, Emit("monitor-input", b"m", b"3"))])
    >>> [(sorted(ps), e.kind, e.value) for ps, e in out]
    [([1], 'outcomes', b'o'), ([0, 1], 'monitor-input', b'[1,2,3]')]
    """
    out: list[tuple[frozenset[int], Any]] = []
    groups: dict[Any, tuple[Any, list[bytes], list[int]]] = {}
    for partition, emit in emitted:
        if emit.kind == kind:
            group = groups.get(emit.key)
            if group is None:
                group = groups[emit.key] = (emit, [], [])
            group[1].append(emit.value)
            group[2].append(partition)
        else:
            out.append((frozenset((partition,)), emit))
    for first, values, partitions in groups.values():
        for start, end in chunks(values):
            out.append((frozenset(partitions[start:end]),
                        first._replace(value=b"[" + b",".join(values[start:end]) + b"]")))
    return out


def chunks(values: list[bytes], max_count: int = PACK_MAX, max_bytes: int = PACK_MAX_BYTES) -> list[tuple[int, int]]:
    """``[start, end)`` ranges that cut ``values`` into packed messages: as many values as fit,
    in order, in at most ``max_count`` values and ``max_bytes`` bytes joined by commas (a value
    longer than that travels alone).

    >>> chunks([b"ab"] * 3), chunks([b"ab"] * 3, max_count=2), chunks([])
    ([(0, 3)], [(0, 2), (2, 3)], [])
    >>> chunks([b"ab", b"ab", b"abcdefgh", b"a"], max_bytes=6)
    [(0, 2), (2, 3), (3, 4)]
    """
    # values[s:e] joined by commas is ends[e - 1] - ends[s - 1] - 1 bytes long, where ends[i] is
    # the length of values[:i + 1] plus i + 1: the cuts are found by bisection, not value by value
    ends = list(map(add, accumulate(map(len, values)), range(1, len(values) + 1)))
    out = []
    start, before = 0, 0
    while start < len(values):
        end = min(start + max_count, bisect_right(ends, before + max_bytes + 1, start))
        end = max(end, start + 1)
        out.append((start, end))
        start, before = end, ends[end - 1]
    return out


def pack_each_partition(emitted: list[tuple[int, Any]], kind: str = "monitor-input") -> dict[int, list[Any]]:
    """Per partition, :func:`pack` of its own messages: each message of ``emitted`` lands in
    exactly one list (what the join keeps in each partition's outbox).

    Examples
    --------
    >>> from streams.partition import Emit
    >>> out = pack_each_partition([(0, Emit("monitor-input", b"m", b"1")), (1, Emit("outcomes", b"p", b"o")),
    ...                            (1, Emit("monitor-input", b"m", b"2")), (0, Emit("monitor-input", b"m", b"3"))])
    >>> {p: [(e.kind, e.value) for e in messages] for p, messages in sorted(out.items())}
    {0: [('monitor-input', b'[1,3]')], 1: [('outcomes', b'o'), ('monitor-input', b'[2]')]}
    """
    mine: dict[int, list[Any]] = {}
    for partition, emit in emitted:
        mine.setdefault(partition, []).append(emit)
    return {partition: pack(messages, kind) for partition, messages in mine.items()}


def unpack(raw: bytes | None) -> list[Any]:
    """The observations of one ``monitor-input`` value (see :func:`read`)."""
    return read(raw)[0]


def read(raw: bytes | None) -> tuple[list[Any], bool]:
    """The observations of one ``monitor-input`` value: a packed array or a single object; and
    whether JSON's usual reading took it (``False``: it holds an integer past the float range,
    read as such by msgspec).

    Raises ``orjson.JSONDecodeError`` (a ``ValueError``) when ``raw`` is not JSON and
    ``TypeError`` when it is neither an object nor an array.

    >>> read(b'[{"k":"p"},{"k":"o"}]'), unpack(b'{"k":"c"}')
    (([{'k': 'p'}, {'k': 'o'}], True), [{'k': 'c'}])
    """
    usual = True
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        # orjson reads no integer past the float range; msgspec does (a prediction's raw event
        # may hold one): one such value must not cost the other observations of the message
        try:
            value = msgspec.json.decode(raw or b"")
        except msgspec.DecodeError:
            raise exc from None
        usual = False
    if isinstance(value, list):
        return [expand(obs) if type(obs) is dict else obs for obs in value], usual
    if isinstance(value, dict):
        return [expand(value)], usual
    raise TypeError(f"a monitor observation is a JSON object or an array of them, not {type(value).__name__}")
