"""Where a worker's CPU goes: the loop's own logic per prediction and per label, run without
servers, against the budget the speed target leaves.

``benchmarks/pipeline.py`` measures the whole worker: its logic plus everything around it (the
Kafka fetches and sends, the Redis checkpoints, the event loop, the other processes on the
cores). This one measures only the logic, the part the code controls most directly, in one
process and half a minute, so a change to it can be compared run against run without the
servers' noise.

On the pipeline benchmark's messages (four models, three features, class scores, a region tag:
:func:`benchmarks.pipeline.make_messages`) it runs, in this process and one thread, what a worker
runs per batch, with the default settings:

* the join (:class:`streams.partition.PartitionState`, one partition): apply each record
  (decode, validate, join), expire, pack the monitor observations to publish and the outbox to
  checkpoint (:func:`streams.observations.pack_by_partition`, ``pack_each_partition``) and encode
  the checkpoint (:meth:`~streams.partition.PartitionState.changes`), ``batch_max`` records at a
  time;
* the monitors (:class:`streams.monitor_state.MonitorPartition`, one partition): apply each
  packed observation message (drift, estimated performance, review routing, the error model's
  learning), finish each join batch's messages (the registry checkpoints due), and encode their
  checkpoint once per ten join batches, as the worker does.

First a warm-up (``--warmup`` predictions of each model and their labels) completes every drift
reference and trains the routing error model, as the pipeline benchmark's warm-up does; then
``--predictions`` new predictions, then their labels, are timed (``time.process_time``: this
process's CPU). Kafka's and Redis's costs are not in these numbers; (a), below, is a consumer's
alone.

The speed target of a worker process is 15 % of the raw ceiling (a) in predictions/s. On one core
that leaves ``1e6 / (0.15 * raw)`` µs per prediction for everything: the logic measured here and
the fetch, the sends and the checkpoint's round trips. The run first measures (a) as
``benchmarks/pipeline.py`` does, on the same messages: it starts an embedded broker and Redis,
publishes the predictions and labels, reads them back with a raw ``aiokafka`` consumer that
decodes every value (the best of two passes on each event loop), and stops the servers before
the logic is timed, so the budget and the logic are measured on the machine as it is in that one
run (its speed drifts from hour to hour). ``--raw-per-s`` gives (a) instead, without servers.

Ends with one JSON line: ``join_us_per_prediction``, ``monitors_us_per_prediction``,
``logic_us_per_prediction``, the same ``..._per_label``, ``raw_per_s``, ``budget_us_per_prediction``,
``logic_share_of_budget`` and ``floor_share_of_budget`` (the logic plus reading each prediction
once as (a) reads it, which alone is 15 % of the budget)::

    .venv/bin/python benchmarks/cpu.py [--predictions 50000] [--repeat 3] [--raw-per-s MESSAGES_PER_S]

Each figure is the lowest of ``--repeat`` runs (fresh states each time): the least disturbed by
the machine's other work.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pipeline import MODELS, make_messages, produce, raw_ceiling  # noqa: E402
from feedback_loop.kafka_admin import ensure_topics  # noqa: E402
from feedback_loop.routing.router import RoutingConfig  # noqa: E402
from feedback_loop.settings import Settings  # noqa: E402
from online_models.learner import learner_configs  # noqa: E402
from streams.monitor import MonitorConfig  # noqa: E402
from streams.monitor_state import MonitorPartition  # noqa: E402
from streams.observations import pack_by_partition, pack_each_partition  # noqa: E402
from streams.partition import PartitionState, Record  # noqa: E402
from streams.worker import signer_for, tune_gc  # noqa: E402

#: the worker's monitor batch: about ten join batches (streams/agents/monitor.py)
MONITOR_EVERY = 10
#: predictions and labels, as (key, value) bytes
Messages = tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]


class Loop:
    """One join partition and one monitor partition, fed batch by batch as a worker feeds them."""

    def __init__(self, settings: Settings) -> None:
        t = settings.topics
        self.settings = settings
        self.topics = {"predictions": t.predictions, "labels": t.labels}
        self.monitor_topic = t.monitor_input
        self.join = PartitionState.for_settings(0, settings)
        self.monitors = MonitorPartition(0, MonitorConfig.from_settings(settings), "cpu-benchmark",
                                         RoutingConfig.from_settings(settings), learning=learner_configs(settings))
        self.signer = signer_for(settings)
        self.offsets = {"join": 0, "monitor": 0}
        self.batches = 0

    def run(self, messages: list[tuple[bytes, bytes]], kind: str) -> tuple[float, float]:
        """Feed ``messages`` of input ``kind``; return the CPU seconds of the join and of the monitors."""
        topic, size = self.topics[kind], self.settings.batch_max
        join_s = monitors_s = 0.0
        now = time.time()
        for start in range(0, len(messages), size):
            began = time.process_time()
            records = [Record(topic, 0, self.offsets["join"] + i, key, value)
                       for i, (key, value) in enumerate(messages[start:start + size])]
            self.offsets["join"] += len(records)
            emitted = [(0, e) for e in self.join.apply_all(records, now)]
            packed = [e for _, e in pack_by_partition(emitted) if e.kind == "monitor-input"]
            pack_each_partition(emitted)  # the partition's outbox, checkpointed with it
            self.join.changes()
            self.join.mark_clean()
            joined = time.process_time()
            self.monitors.apply_all([Record(self.monitor_topic, 0, self.offsets["monitor"] + i, e.key, e.value)
                                     for i, e in enumerate(packed)], now)
            self.offsets["monitor"] += len(packed)
            self.batches += 1
            if self.batches % MONITOR_EVERY == 0:
                self.monitors.changes(self.signer)
                self.monitors.mark_clean()
            join_s += joined - began
            monitors_s += time.process_time() - joined
        return join_s, monitors_s


def measure(settings: Settings, warm: Messages, timed: Messages) -> dict[str, float]:
    """One run on fresh states: µs of CPU per prediction and per label, join and monitors."""
    loop = Loop(settings)
    loop.run(warm[0], "predictions")
    loop.run(warm[1], "labels")
    thresholds, switch = gc.get_threshold(), sys.getswitchinterval()
    tune_gc()  # as the worker does after start-up
    try:
        out = {}
        for kind, messages in (("prediction", timed[0]), ("label", timed[1])):
            join_s, monitors_s = loop.run(messages, kind + "s")
            out[f"join_us_per_{kind}"] = join_s / len(messages) * 1e6
            out[f"monitors_us_per_{kind}"] = monitors_s / len(messages) * 1e6
        return out
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(switch)


def measure_raw(timed: Messages, partitions: int, first_loop: str) -> dict[str, float]:
    """(a) of ``benchmarks/pipeline.py`` on ``timed``, by event loop, with an embedded broker (and
    Redis) started for it and stopped after."""
    from feedback_loop.runtime.embedded import EmbeddedServers

    total = len(timed[0]) + len(timed[1])
    with tempfile.TemporaryDirectory(prefix="fl-bench-cpu-") as tmp:
        servers = EmbeddedServers(data_dir=Path(tmp) / "servers")
        try:
            servers.start()
            uid = uuid.uuid4().hex[:8]
            topics = [f"cpu-{uid}.predictions", f"cpu-{uid}.labels"]
            ensure_topics(servers.bootstrap, topics, partitions)
            for topic, messages in zip(topics, timed):
                produce(servers.bootstrap, topic, messages)
            return raw_ceiling(servers.bootstrap, topics, partitions, total, max(120.0, total / 1000), first_loop)
        finally:
            servers.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=50_000,
                        help="predictions timed, and as many labels (default 50,000, as benchmarks/pipeline.py)")
    parser.add_argument("--warmup", type=int, default=1_000,
                        help="predictions (and labels) of each model before the timed ones (default 1,000: "
                             "the drift reference size, as in benchmarks/pipeline.py)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the logic; each figure is the lowest")
    parser.add_argument("--partitions", type=int, default=8, help="partitions of the raw ceiling's topics")
    parser.add_argument("--raw-per-s", type=float, default=None,
                        help="the raw ceiling (a) in messages/s, instead of measuring it (no servers then)")
    args = parser.parse_args(argv)
    if (args.predictions < 1 or args.repeat < 1 or args.warmup < 0 or args.partitions < 1
            or (args.raw_per_s is not None and args.raw_per_s <= 0)):
        parser.error("--predictions, --repeat and --partitions must be at least 1, --warmup at least 0, "
                     "--raw-per-s positive")
    settings = Settings(signing_key="cpu-benchmark-" + "k" * 32)
    start = datetime.now(timezone.utc).replace(microsecond=0)
    warm = make_messages(args.warmup * len(MODELS), MODELS, "w", 1, start - timedelta(minutes=5))
    timed = make_messages(args.predictions, MODELS, "c", 2, start)
    result: dict[str, Any] = {"predictions": args.predictions, "repeat": args.repeat}
    if args.raw_per_s is None:
        began = time.monotonic()
        by_loop = measure_raw(timed, args.partitions, settings.event_loop)
        raw = max(by_loop.values())
        result["raw_per_s_by_event_loop"] = {name: round(rate, 1) for name, rate in by_loop.items()}
        print(f"(a) raw aiokafka consume + orjson decode of the {2 * args.predictions:,} messages: {raw:,.0f} "
              "messages/s (the best of two passes on each event loop: "
              + ", ".join(f"{name} {rate:,.0f}" for name, rate in by_loop.items())
              + f"; embedded broker started and stopped, {time.monotonic() - began:.1f} s)", flush=True)
    else:
        raw = args.raw_per_s
        print(f"(a) given: {raw:,.0f} messages/s", flush=True)
    runs = []
    for i in range(args.repeat):
        began = time.monotonic()
        runs.append(measure(settings, warm, timed))
        r = runs[-1]
        print(f"run {i + 1}/{args.repeat} ({time.monotonic() - began:.1f} s): per prediction join "
              f"{r['join_us_per_prediction']:.2f} µs + monitors {r['monitors_us_per_prediction']:.2f} µs; "
              f"per label join {r['join_us_per_label']:.2f} µs + monitors {r['monitors_us_per_label']:.2f} µs",
              flush=True)
    best: dict[str, Any] = {k: round(min(r[k] for r in runs), 2) for k in runs[0]}
    best["logic_us_per_prediction"] = round(best["join_us_per_prediction"] + best["monitors_us_per_prediction"], 2)
    best["logic_us_per_label"] = round(best["join_us_per_label"] + best["monitors_us_per_label"], 2)
    budget = 1e6 / (0.15 * raw)
    share = best["logic_us_per_prediction"] / budget
    # reading a prediction as (a) reads it takes 1e6 / raw µs: 15% of the budget by definition
    result.update(best, raw_per_s=round(raw, 1), budget_us_per_prediction=round(budget, 2),
                  logic_share_of_budget=round(share, 3), floor_share_of_budget=round(share + 0.15, 3))
    print(f"the loop's logic, lowest of {args.repeat} runs: {best['logic_us_per_prediction']:.2f} µs per prediction "
          f"(join {best['join_us_per_prediction']:.2f} + monitors {best['monitors_us_per_prediction']:.2f}), "
          f"{best['logic_us_per_label']:.2f} µs per label (join {best['join_us_per_label']:.2f} + monitors "
          f"{best['monitors_us_per_label']:.2f})")
    print(f"15% of (a) is {0.15 * raw:,.0f} predictions/s: {budget:.2f} µs of one core per prediction for "
          f"everything; the logic alone takes {share:.0%} of it, and {share + 0.15:.0%} with reading each "
          f"prediction once as (a) reads it ({1e6 / raw:.2f} µs)")
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
