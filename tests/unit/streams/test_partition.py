"""PartitionState: offsets dedupe, dead letters, aggregates under revision, expiry, checkpoints."""

from __future__ import annotations

import base64

import orjson
import pytest

from streams.observations import unpack
from streams.partition import PartitionState, Record, encode_agg_key

HOUR = 3600.0


def state(**kw) -> PartitionState:
    return PartitionState(partition=0, ttl=kw.pop("ttl", 2 * HOUR), retention=kw.pop("retention", 10 * HOUR),
                          window_size=kw.pop("window_size", 3), max_event_bytes=kw.pop("max_event_bytes", 2048))


class Feed:
    """Builds records with growing offsets per topic."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def __call__(self, topic: str, body: dict | bytes, key: str | None = "auto") -> Record:
        value = body if isinstance(body, bytes) else orjson.dumps(body)
        if key == "auto":
            key = body["prediction_id"] if isinstance(body, dict) else None
        offset = self.offsets.get(topic, -1) + 1
        self.offsets[topic] = offset
        return Record(topic, 0, offset, None if key is None else key.encode(), value)


def ts(hours: float) -> str:
    return f"2026-11-22T{int(hours):02d}:{int(hours % 1 * 60):02d}:00Z"


def p(pid, value="yes", hours=0.0, **kw):
    return {"prediction_id": pid, "model": "m", "model_version": "1", "timestamp": ts(hours),
            "features": {}, "prediction": value, **kw}


def lab(pid, value, hours=1.0):
    return {"prediction_id": pid, "label": value, "timestamp": ts(hours)}


def whole(s: PartitionState):
    return s.aggregates[("m", "1", "", "")]


def kinds(emits):
    return [e.kind for e in emits]


def test_outcome_and_metrics_follow_revisions():
    s, feed = state(), Feed()
    out = s.apply_all([feed("predictions", p("a", tags={"r": "eu"}, scores={"yes": 0.9, "no": 0.1})),
                       feed("labels", lab("a", "no"))])
    assert kinds(out) == ["monitor-input", "outcomes", "monitor-input"]
    assert orjson.loads(out[1].value)["revision"] == 1
    # a new prediction's observation travels compact (its event's bytes) and reads as the full form
    assert orjson.loads(out[0].value)["k"] == "P"
    assert unpack(out[0].value) == [{"k": "p", "m": "m", "v": "1", "id": "a", "t": 1795305600.0,
                                     "x": {}, "y": "yes", "c": 0.9,
                                     "s": {"yes": 0.9, "no": 0.1}, "tg": {"r": "eu"}}]
    assert orjson.loads(out[2].value) == {
        "k": "o", "m": "m", "v": "1", "id": "a", "t": 1795309200.0, "pt": 1795305600.0, "ok": False,
        "c": 0.9, "r": 1, "l": "no", "src": "label", "y": "yes", "s": {"yes": 0.9, "no": 0.1}, "lf": True}
    assert orjson.loads(out[2].value)["ok"] is False and out[2].key == b"m"
    out = s.apply_all([feed("labels", lab("a", "yes"))])
    assert kinds(out) == ["outcomes", "monitor-input"]
    assert orjson.loads(out[0].value)["revision"] == 2 and orjson.loads(out[1].value)["r"] == 2
    for key in (("m", "1", "", ""), ("m", "1", "r", "eu")):
        result = s.aggregates[key].cumulative.result()
        assert (result["count"], result["correct"]) == (1, 1)
        assert s.aggregates[key].predictions == 1


def test_a_record_seen_again_is_applied_once():
    s, feed = state(), Feed()
    records = [feed("predictions", p("a")), feed("labels", lab("a", "no"))]
    assert kinds(s.apply_all(records)) == ["monitor-input", "outcomes", "monitor-input"]
    assert s.apply_all(records) == []
    assert whole(s).cumulative.result()["count"] == 1 and whole(s).predictions == 1


@pytest.mark.parametrize("body,key,reason", [
    (b"{not json", "a", "invalid JSON"),
    ({"prediction_id": "a", "label": "x"}, "a", "timestamp: Field required"),
    (lab("a", "x"), "b", "message key must be the prediction_id 'a'"),
    (lab("a", "x"), None, "got no key"),
    ({**lab("a", "x"), "pad": "z" * 3000}, "a", "exceeds max_event_bytes=2048"),
])
def test_bad_records_become_dead_letters(body, key, reason):
    s, feed = state(), Feed()
    record = feed("labels", body, key=key)
    (emit,) = s.apply_all([record])
    letter = orjson.loads(emit.value)
    assert emit.kind == "dead-letters" and reason in letter["reason"]
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == ("labels", 0, 0)
    assert base64.b64decode(letter["payload"]) == record.value[:2048]
    assert letter["payload_truncated"] == (len(record.value) > 2048)
    assert s.counters["dead_letters"] == 1 and s.entries == {}


def test_conflicting_prediction_is_dead_lettered_duplicate_is_counted():
    s, feed = state(), Feed()
    s.apply_all([feed("predictions", p("a")), feed("predictions", p("a"))])
    assert s.counters["duplicate_predictions"] == 1
    (emit,) = s.apply_all([feed("predictions", p("a", value="no"))])
    assert emit.kind == "dead-letters" and "already holds a different prediction" in orjson.loads(emit.value)["reason"]
    assert whole(s).predictions == 1


def test_expiry_by_event_time():
    s, feed = state(ttl=2 * HOUR, retention=3 * HOUR), Feed()
    s.apply_all([feed("predictions", p("unlabeled", hours=0)), feed("labels", lab("orphan", "x", hours=0.5)),
                 feed("predictions", p("done", hours=0)), feed("labels", lab("done", "yes", hours=1))])
    assert set(s.entries) == {"unlabeled", "orphan", "done"}
    s.apply_all([feed("predictions", p("late", hours=2.25)), feed("labels", lab("late", "no", hours=2.25))])
    assert s.watermark == s.input_high["labels"] == s.input_high["predictions"]
    assert "unlabeled" not in s.entries and "orphan" in s.entries
    assert whole(s).expired_unlabeled == 1 and s.counters["orphan_labels"] == 0
    s.apply_all([feed("predictions", p("later", hours=4.5)), feed("labels", lab("later", "no", hours=4.5))])
    assert set(s.entries) == {"late", "later"}  # "late" is kept for revisions until 5:15
    assert s.counters["orphan_labels"] == 1 and s.counters["retired_outcomes"] == 1
    assert whole(s).expired_unlabeled == 1
    assert whole(s).cumulative.result()["count"] == 3


def test_the_slower_input_holds_the_watermark_back_until_it_idles():
    s, feed = state(ttl=2 * HOUR), Feed()
    s.idle_seconds = 30.0
    s.apply_all([feed("predictions", p("a", hours=0)), feed("labels", lab("x", "y", hours=0))], now=0.0)
    # labels run far ahead (a replay delivering one topic faster than the other)
    s.apply_all([feed("labels", lab("a", "yes", hours=9))], now=1.0)
    assert s.watermark == s.input_high["predictions"] < s.input_high["labels"]
    assert "a" in s.entries and "x" in s.entries  # nothing expired: predictions hold it back
    s.apply_all([feed("predictions", p("b", hours=9))], now=2.0)
    assert s.counters["orphan_labels"] == 1 and "a" in s.entries
    # both inputs silent for longer than idle_seconds: the watermark takes the largest high
    s.apply_all([feed("predictions", p("c", hours=20))], now=3.0)
    assert s.expire(now=40.0) >= 1 and s.watermark == s.input_high["predictions"]


def test_no_inputs_no_watermark():
    s = state()
    assert s.expire(now=100.0) == 0 and s.watermark == float("-inf")


def test_rolling_window_keeps_latest_predictions():
    s, feed = state(window_size=2), Feed()
    for i, h in enumerate((0.1, 0.2, 0.3)):
        s.apply_all([feed("predictions", p(f"x{i}", hours=h)), feed("labels", lab(f"x{i}", "yes"))])
    assert [smp.prediction_id for smp in whole(s).rolling.samples()] == ["x1", "x2"]
    assert whole(s).cumulative.result()["count"] == 3


def test_checkpoint_round_trip_restores_everything():
    s, feed = state(), Feed()
    s.apply_all([feed("predictions", p("a", scores={"yes": 0.7, "no": 0.3}, tags={"r": "eu"})),
                 feed("labels", lab("a", "no")), feed("labels", lab("b", "x")),
                 feed("labels", b"garbage", key="z"),
                 feed("predictions", p("c", confidence=0.6, tags={"r": "us"}, note="kept"))])
    changes = s.changes()
    restored = state()
    restored.restore({k.encode(): v for k, v in changes.entries.items()}, changes.aggregates,
                     {k.encode(): v for k, v in changes.meta.items()}, changes.window_set)
    assert restored.entries == s.entries
    assert restored.offsets == s.offsets and restored.watermark == s.watermark
    assert restored.counters == s.counters
    assert restored.input_high == s.input_high
    for key, agg in s.aggregates.items():
        assert restored.aggregates[key].to_dict() == agg.to_dict()
        assert restored.aggregates[key].rolling.samples() == agg.rolling.samples()
    s.mark_clean()
    assert not s.dirty


def test_a_prediction_waiting_for_its_truth_is_checkpointed_as_it_came():
    s, feed = state(), Feed()
    # (as a producer may write it: JSON with whitespace around)
    waiting = feed("predictions", b"\n " + orjson.dumps(p("c", scores={"yes": 0.6, "no": 0.4}, tags={"r": "eu"})),
                   key="c")
    s.apply_all([waiting, feed("predictions", p("d")), feed("labels", lab("d", "no"))])
    changes = s.changes()
    assert changes.entries["c"] == waiting.value  # the event's own bytes
    assert orjson.loads(changes.entries["d"])[0] == "d"  # joined: the entry's list form
    restored = state()
    restored.restore({k.encode(): v for k, v in changes.entries.items()}, {}, {})
    assert restored.entries == s.entries
    s.mark_clean()
    s.apply_all([feed("labels", lab("c", "no"))])  # its truth arrives: now the list form
    stored = orjson.loads(s.changes().entries["c"])
    assert stored[0] == "c" and stored[4][:3] == ["no", False, "label"]


def test_window_checkpoints_are_incremental():
    s, feed = state(window_size=2), Feed()
    stored: dict[bytes, bytes] = {}

    def checkpoint():
        changes = s.changes()
        for f in changes.window_removed:
            del stored[f]
        stored.update(changes.window_set)
        s.mark_clean()
        return changes

    for i, h in enumerate((0.1, 0.2)):
        s.apply_all([feed("predictions", p(f"x{i}", hours=h)), feed("labels", lab(f"x{i}", "yes"))])
    assert len(checkpoint().window_set) == 2
    s.apply_all([feed("predictions", p("x2", hours=0.3)), feed("labels", lab("x2", "no"))])
    changes = checkpoint()
    assert len(changes.window_set) == 1 and len(changes.window_removed) == 1
    s.apply_all([feed("labels", lab("x2", "yes"))])  # a revision rewrites one sample
    assert len(checkpoint().window_set) == 1
    restored = state(window_size=2)
    restored.restore({}, {k: orjson.dumps(a.to_dict()) for k, a in
                          ((encode_agg_key(k), a) for k, a in s.aggregates.items())}, {}, stored)
    assert restored.aggregates[("m", "1", "", "")].rolling.samples() == whole(s).rolling.samples()
