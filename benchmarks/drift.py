"""Concept-drift detection of the live pipeline against River's ADWIN applied offline.

River's synthetic streams with a known drift, each predicted by a model trained on the first
concept and then frozen: SEA, Agrawal and STAGGER with an abrupt drift (``--seeds`` seeds each,
30 by default), and SEA through ``ConceptDriftStream`` with a gradual drift of ``--width``
samples. Every stream becomes one model of the deployment; its predictions and (immediate) labels
go through the live loop (embedded broker and Redis, one worker), whose monitor raises
concept-drift alerts. The same error sequences go through ``river.drift.ADWIN`` offline.

Reported for both: mean and p90 detection delay in samples after the drift point (the centre of
a gradual drift), drifts missed (no detection before the stream ends), false alarms per 100,000
stationary samples (detections before the drift). The pipeline deduplicates alerts: detections
within one firing episode count once.

The topics have one partition, so the pipeline's detector sees each model's errors in exactly
the order the offline detector does: any difference would be lost, doubled or reordered
outcomes.

Usage: ``python benchmarks/drift.py [--seeds 30] [--before 3000] [--after 1500]``. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaConsumer, TopicPartition
from river import drift, tree
from river.datasets import synth

from feedback_loop.replay import publish
from feedback_loop.settings import Settings
from feedback_loop.stack import LocalStack

STREAMS = {
    "sea": lambda seed: (synth.SEA(variant=0, seed=seed), synth.SEA(variant=3, seed=seed + 1000)),
    "agrawal": lambda seed: (synth.Agrawal(classification_function=0, seed=seed),
                             synth.Agrawal(classification_function=4, seed=seed + 1000)),
    "stagger": lambda seed: (synth.STAGGER(classification_function=0, seed=seed),
                             synth.STAGGER(classification_function=2, seed=seed + 1000)),
}


@dataclass
class Case:
    name: str
    kind: str  # abrupt | gradual
    drift_at: int
    rows: list[tuple[dict, str, str, dict]] = field(default_factory=list)  # x, y, prediction, scores
    errors: list[int] = field(default_factory=list)


def features(x: dict) -> dict:
    return {f"x{k}" if not isinstance(k, str) else k: v for k, v in x.items()}


def frozen_model(first, seed: int, n: int = 2000):
    model = tree.HoeffdingTreeClassifier(grace_period=50)
    for x, y in itertools.islice(first, n):
        model.learn_one(features(x), str(y))
    return model


def build_cases(seeds: int, before: int, after: int, width: int) -> list[Case]:
    cases = []
    for family, make in STREAMS.items():
        for seed in range(seeds):
            first, second = make(seed)
            model = frozen_model(make(seed + 5000)[0], seed)
            stream = itertools.chain(itertools.islice(first, before), itertools.islice(second, after))
            cases.append(fill(Case(f"{family}-{seed}", "abrupt", before), model, stream))
    for seed in range(max(1, seeds // 3)):
        model = frozen_model(synth.SEA(variant=0, seed=seed + 9000), seed)
        stream = synth.ConceptDriftStream(stream=synth.SEA(variant=0, seed=seed),
                                          drift_stream=synth.SEA(variant=3, seed=seed + 1000),
                                          position=before, width=width, seed=seed)
        cases.append(fill(Case(f"sea-gradual-{seed}", "gradual", before), model,
                          itertools.islice(stream, before + after)))
    return cases


def fill(case: Case, model, stream) -> Case:
    for x, y in stream:
        fx = features(x)
        proba = model.predict_proba_one(fx)
        pred = max(proba, key=proba.get) if proba else "0"
        case.rows.append((fx, str(y), str(pred), {str(k): float(v) for k, v in proba.items()}))
        case.errors.append(int(str(pred) != str(y)))
    return case


def offline(case: Case) -> list[int]:
    """Indices (1-based sample counts) where ADWIN flags a change."""
    detector = drift.ADWIN()
    hits = []
    for i, e in enumerate(case.errors, 1):
        detector.update(e)
        if detector.drift_detected:
            hits.append(i)
    return hits


def messages(cases: list[Case]):
    start = 1_700_000_000.0
    length = max(len(c.rows) for c in cases)
    for i in range(length):
        ts = start + i
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + "Z"
        for case in cases:
            if i >= len(case.rows):
                continue
            x, y, pred, scores = case.rows[i]
            pid = f"{case.name}-{i:06d}"
            body = {"prediction_id": pid, "model": case.name, "model_version": "frozen",
                    "timestamp": stamp, "features": x, "prediction": pred}
            if scores:
                body["scores"] = scores
            yield "predictions", pid.encode(), orjson.dumps(body)
            yield "labels", pid.encode(), orjson.dumps({"prediction_id": pid, "label": y, "timestamp": stamp})


def summarize(delays: list[int], missed: int) -> dict:
    return {"mean_delay": statistics.fmean(delays) if delays else None,
            "p90_delay": float(np.percentile(delays, 90)) if delays else None,
            "missed": missed}


def score(cases: list[Case], hits: dict[str, list[int]]) -> tuple[dict, dict]:
    by_kind: dict[str, tuple[list[int], int]] = {}
    false_alarms = stationary = 0
    for case in cases:
        h = hits.get(case.name, [])
        false_alarms += sum(1 for i in h if i <= case.drift_at)
        stationary += case.drift_at
        after = [i - case.drift_at for i in h if i > case.drift_at]
        delays, missed = by_kind.setdefault(case.kind, ([], 0))
        if after:
            delays.append(after[0])
        else:
            by_kind[case.kind] = (delays, missed + 1)
    return ({k: summarize(d, m) for k, (d, m) in by_kind.items()},
            {"false_alarms_per_100k": 1e5 * false_alarms / stationary})


def pipeline_hits(settings: Settings, cases: list[Case], timeout: float) -> dict[str, list[int]]:
    expected = 2 * sum(len(c.rows) for c in cases)
    import redis

    client = redis.Redis.from_url(settings.redis_url or "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beats = [orjson.loads(v) for v in client.mget(list(client.scan_iter(settings.key("workers", "*")))) if v]
        done = sum(b["events"].get("monitor_events", 0) for b in beats)
        print(f"  monitor observations {done:,}/{expected:,}", file=sys.stderr, flush=True)
        if done >= expected:
            break
        time.sleep(5)
    else:
        raise SystemExit("the pipeline did not process every observation in time")
    time.sleep(3)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    tp = TopicPartition(settings.topics.drift_alerts, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    hits: dict[str, set[int]] = {}
    for message in consumer:
        alert = orjson.loads(message.value)
        if alert["kind"] == "concept" and alert["status"] == "firing":
            hits.setdefault(alert["model"], set()).add(alert["outcomes_seen"])
    consumer.close()
    return {name: sorted(v) for name, v in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--before", type=int, default=3000, help="stationary samples before the drift")
    parser.add_argument("--after", type=int, default=1500, help="samples after the drift")
    parser.add_argument("--width", type=int, default=500, help="width of the gradual drift")
    args = parser.parse_args()

    t0 = time.monotonic()
    cases = build_cases(args.seeds, args.before, args.after, args.width)
    print(f"{len(cases)} streams, {sum(len(c.rows) for c in cases):,} samples "
          f"(built in {time.monotonic() - t0:.0f} s)", file=sys.stderr)
    offline_hits = {c.name: offline(c) for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(partitions=1, data_dir=Path(tmp), broker_rebalance_timeout=1.0,
                            drift_reference_size=1000, drift_window_size=500)
        stack = LocalStack(settings, env=dict(os.environ), say=lambda m: print(m, file=sys.stderr))
        try:
            resolved = stack.start()
            t1 = time.monotonic()
            stats = publish(resolved.kafka_bootstrap or "", resolved.topics, messages(cases))
            print(f"published {stats.predictions + stats.labels:,} messages in {stats.seconds:.0f} s",
                  file=sys.stderr)
            live_hits = pipeline_hits(resolved, cases, timeout=1800)
            elapsed = time.monotonic() - t1
        finally:
            stack.stop()

    # The pipeline alerts once per episode: dedupe the offline hits the same way for a like-for-like
    # count of false alarms, but keep ADWIN's raw first detection for the delay.
    pipe_kind, pipe_fa = score(cases, live_hits)
    adwin_kind, adwin_fa = score(cases, offline_hits)
    print(f"\n{'':10} {'kind':8} {'mean delay':>11} {'p90 delay':>10} {'missed':>7}")
    for who, kinds in (("pipeline", pipe_kind), ("ADWIN", adwin_kind)):
        for kind, s in sorted(kinds.items()):
            print(f"{who:10} {kind:8} {s['mean_delay'] or float('nan'):11.1f} {s['p90_delay'] or float('nan'):10.1f} "
                  f"{s['missed']:7d}")
    print(f"false alarms per 100k stationary samples: pipeline {pipe_fa['false_alarms_per_100k']:.1f}, "
          f"ADWIN {adwin_fa['false_alarms_per_100k']:.1f}")
    print(f"pipeline run: {elapsed:.0f} s")
    print(json.dumps({
        "pipeline_mean_delay": pipe_kind["abrupt"]["mean_delay"],
        "adwin_mean_delay": adwin_kind["abrupt"]["mean_delay"],
        "pipeline_p90_delay": pipe_kind["abrupt"]["p90_delay"],
        "adwin_p90_delay": adwin_kind["abrupt"]["p90_delay"],
        "pipeline_gradual_mean_delay": pipe_kind.get("gradual", {}).get("mean_delay"),
        "adwin_gradual_mean_delay": adwin_kind.get("gradual", {}).get("mean_delay"),
        "pipeline_false_alarms_per_100k": pipe_fa["false_alarms_per_100k"],
        "adwin_false_alarms_per_100k": adwin_fa["false_alarms_per_100k"],
        "missed_abrupt": pipe_kind["abrupt"]["missed"],
        "adwin_missed_abrupt": adwin_kind["abrupt"]["missed"],
        "streams": len(cases),
    }))


if __name__ == "__main__":
    main()
