"""Review routing inside the monitor partition: review-queue emits keyed by prediction id, replays,
router checkpoints (signed pickles) that restore the same decisions, tampered blobs refused, drift
alerts that start drift sampling, and no routing at all when it is off."""

from __future__ import annotations

import logging
import random

import pytest

from feedback_loop.events import ReviewRequest
from feedback_loop.routing.router import RoutingConfig
from feedback_loop.signing import Signer
from streams.monitor import MonitorConfig
from streams.monitor_state import MonitorPartition
from streams.observations import outcome_observation, prediction_observation
from streams.partition import Record

SIGNER = Signer(b"k" * 32)
T0 = 1_700_000_000.0
IDENT = b"m\x1f1"


def config() -> MonitorConfig:
    return MonitorConfig(resolve_samples=500, reference_size=200, window_size=100, estimate_window=200,
                         cooldown=3600.0)


def routing(**kw) -> RoutingConfig:
    return RoutingConfig(**{"policies": ("least_confidence", "label_error"), **kw})


def pred_record(offset: int, pid: str, confidence: float | None, x: float = 0.0, t: float | None = None,
                **kw) -> Record:
    key, value = prediction_observation(pid, "m", "1", T0 + (offset if t is None else t), {"f": x},
                                        "a", confidence, **kw)
    return Record("monitor-input", 0, offset, key, value)


def outcome_record(offset: int, pid: str, label: str, confidence: float, first: bool = True) -> Record:
    key, value = outcome_observation(pid, "m", "1", T0 + 1.0, T0 + offset, label == "a", confidence, 1,
                                     label, "label", {"f": 0.0}, "a", None, first)
    return Record("monitor-input", 0, offset, key, value)


def warm_records(n: int = 25) -> list[Record]:
    """Unscored predictions (no confidence): they fill the gate's history, nothing is routed."""
    return [pred_record(i, f"w{i}", None) for i in range(n)]


def mixed_records(start: int, n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    return [pred_record(i, f"p{i}", rng.uniform(0.5, 1.0), rng.gauss(0, 1)) for i in range(start, start + n)]


def review_emits(emits) -> list:
    return [e for e in emits if e.kind == "review-queue"]


def test_an_uncertain_prediction_is_emitted_to_the_review_queue_keyed_by_its_id():
    part = MonitorPartition(0, config(), "e", routing=routing())
    assert review_emits(part.apply_all(warm_records())) == []
    (emit,) = review_emits(part.apply(pred_record(25, "p-unsure", 0.6, tags={"region": "eu"})))
    assert emit.key == b"p-unsure"
    request = ReviewRequest.model_validate_json(emit.value)
    assert (request.prediction_id, request.model, request.model_version) == ("p-unsure", "m", "1")
    assert (request.reason, request.priority, request.prediction) == ("least_confidence", pytest.approx(0.8), "a")
    assert request.tags == {"region": "eu"} and request.features == {"f": 0.0}
    assert request.requested_at.timestamp() == T0 + 25


def test_a_replayed_offset_emits_nothing_and_does_not_touch_the_router():
    part = MonitorPartition(0, config(), "e", routing=routing())
    part.apply_all(warm_records())
    record = pred_record(25, "p-unsure", 0.6)
    assert len(review_emits(part.apply(record))) == 1
    router = part.routers[("m", "1")]
    seen, tokens = router.gate.seen, router.gate.tokens
    assert part.apply(record) == []
    assert (router.gate.seen, router.gate.tokens) == (seen, tokens)


def test_a_suspect_label_is_emitted_at_once():
    part = MonitorPartition(0, config(), "e", routing=routing())
    (emit,) = review_emits(part.apply(outcome_record(0, "p-7", "b", 0.97)))
    request = ReviewRequest.model_validate_json(emit.value)
    assert emit.key == b"p-7"
    assert (request.reason, request.priority, request.label) == ("label_error", 0.97, "b")


def test_first_labels_train_the_router_once():
    part = MonitorPartition(0, config(), "e", routing=routing(policies=("learned",)))
    part.apply(outcome_record(0, "p-1", "b", 0.6, first=True))
    part.apply(outcome_record(1, "p-1", "a", 0.6, first=False))
    assert part.routers[("m", "1")].errors.learned == 1


def restore_from(part: MonitorPartition, routing_config: RoutingConfig | None, blobs=None) -> MonitorPartition:
    changes = part.changes(SIGNER)
    fresh = MonitorPartition(0, config(), "e", routing=routing_config)
    fresh.restore(changes.monitors, changes.references, {b"offsets": changes.meta["offsets"]}, SIGNER,
                  routers=changes.routers if blobs is None else blobs)
    return fresh


def test_checkpointed_router_restores_to_the_same_decisions():
    part = MonitorPartition(0, config(), "e", routing=routing())
    part.apply_all(warm_records() + mixed_records(25, 300, seed=1))
    changes = part.changes(SIGNER)
    assert set(changes.routers) == {IDENT}
    restored = restore_from(part, routing())
    assert restored.offsets == part.offsets
    assert restored.routers[("m", "1")].gate.seen == part.routers[("m", "1")].gate.seen == 325
    later = mixed_records(325, 300, seed=2)
    ours, theirs = review_emits(part.apply_all(later)), review_emits(restored.apply_all(later))
    assert ours == theirs and len(ours) > 0
    assert restored.apply_all(later) == []  # the restored offsets dedup too


def test_a_restored_router_takes_the_current_routing_settings():
    part = MonitorPartition(0, config(), "e", routing=routing())
    part.apply_all(warm_records())
    new = routing(budgets={"m": 5.0})
    router = restore_from(part, new).routers[("m", "1")]
    assert router.config is new and router.gate.budget_per_hour == 5.0 and router.gate.seen == 25


def test_a_tampered_router_is_refused_and_a_fresh_one_used(caplog):
    part = MonitorPartition(0, config(), "e", routing=routing())
    part.apply_all(warm_records())
    blob = part.changes(SIGNER).routers[IDENT]
    tampered = {IDENT: blob[:-1] + bytes([blob[-1] ^ 1])}
    with caplog.at_level(logging.ERROR, logger="streams.monitor_state"):
        restored = restore_from(part, routing(), blobs=tampered)
    assert ("m", "1") not in restored.routers
    assert any("review router of m 1 not restored" in r.getMessage() and "signature" in r.getMessage()
               for r in caplog.records)
    # The original routes this uncertain prediction; the fresh router has no history yet.
    record = pred_record(25, "p-unsure", 0.6)
    assert len(review_emits(part.apply(record))) == 1
    assert review_emits(restored.apply(record)) == []
    assert restored.routers[("m", "1")].gate.seen == 1


def test_a_blob_signed_with_another_key_is_refused(caplog):
    part = MonitorPartition(0, config(), "e", routing=routing())
    part.apply_all(warm_records())
    other = {IDENT: Signer(b"o" * 32).dumps(part.routers[("m", "1")])}
    with caplog.at_level(logging.ERROR, logger="streams.monitor_state"):
        restored = restore_from(part, routing(), blobs=other)
    assert restored.routers == {} and "review router" in caplog.text


def test_without_routing_nothing_is_routed_nor_checkpointed():
    part = MonitorPartition(0, config(), "e")
    emits = part.apply_all(warm_records() + mixed_records(25, 200, seed=3) + [outcome_record(225, "p-7", "b", 0.99)])
    assert review_emits(emits) == [] and part.routers == {}
    assert part.changes(SIGNER).routers == {}


def test_routers_are_ignored_on_restore_when_routing_is_off():
    part = MonitorPartition(0, config(), "e", routing=routing())
    part.apply_all(warm_records())
    assert restore_from(part, None).routers == {}


def test_a_firing_drift_alert_starts_drift_sampling():
    part = MonitorPartition(0, config(), "e", routing=routing(policies=("drift",), drift_samples=5))
    rng = random.Random(1)
    offset, fired_at, requests = 0, None, []
    for shift in (0.0, 3.0):
        for _ in range(600):
            emits = part.apply(pred_record(offset, f"p{offset}", 0.9, rng.gauss(shift, 1)))
            requests += [ReviewRequest.model_validate_json(e.value) for e in review_emits(emits)]
            if fired_at is None and any(e.kind == "drift-alerts" for e in emits):
                fired_at = offset
                router = part.routers[("m", "1")]
                assert router.drift_left == 4  # the firing prediction itself is the first sample
            offset += 1
    assert fired_at is not None and fired_at >= 600
    assert part.routers[("m", "1")].drift_left == 0
    # nothing else scores, so the gate passes all five samples: the firing one and the next four
    assert [(r.reason, r.prediction_id) for r in requests] == [
        ("drift", f"p{i}") for i in range(fired_at, fired_at + 5)]
