"""Does the worker's memory stop growing once the join's TTL starts expiring state?

Issue 6's acceptance: "1,000,000 predictions with 10% never labeled and a short TTL: resident memory
stops growing after the TTL, shown by the benchmark's RSS samples".

One run starts an embedded broker (Tansu) and an embedded Redis in a temporary directory and ONE
real worker (``python -m feedback_loop worker``, as :mod:`benchmarks.pipeline` starts it) with

* ``prediction_ttl_seconds = --ttl`` (default 60 s of event time): an unlabeled prediction (or an
  orphan label) leaves the join state when the event-time watermark passes its time + TTL;
* ``outcome_retention_seconds = --retention`` (default 30 s): a joined prediction leaves it when the
  watermark passes its label time + retention.

It then publishes ``--predictions`` PredictionEvents (default 1,000,000; the generator of
:func:`pipeline.make_messages`: four models, three regions, three features, class scores) whose
event times advance by exactly 1 ms, so 1,000,000 predictions span 1,000 s of event time, about
17 TTLs. 90 % of them get their LabelEvent ``--label-delay`` (default 5 s) of event time later,
``--unlabeled`` (default 10 %, chosen at random) never get one. Predictions and labels go to their
two topics interleaved in event-time order (a label is sent just before the first prediction that
is later than it), ``--chunk`` predictions (default 10,000, i.e. 10 s of event time) at a time,
generated chunk by chunk. The worker consumes live: after each chunk the publisher waits until the
worker has applied all but the last ``--lead`` chunks (default 2), so the backlog in the broker
never exceeds ``(lead + 1) x chunk`` predictions and the run measures a worker keeping up, not one
draining a pre-filled topic.

Every ``--interval`` s (default 0.5) a thread samples

* ``rss``: the resident memory of the worker's process tree (``psutil``; the worker and any child);
* ``applied``: predictions applied by the worker, i.e. the sum over partitions of the join
  checkpoints' last applied offset of the predictions topic plus one (``{ns}:meta:{p}``, field
  ``offsets``, as :class:`pipeline.Checkpoints` reads them; the topic is new, so offsets start at 0);
* ``entries``: live join entries, the sum over partitions of ``HLEN {ns}:join:{p}`` (the
  checkpointed join state, which equals the worker's in-memory entries after every batch);
* ``redis``: Redis ``used_memory`` (INFO memory).

Progress lines are printed at every 10 % of the predictions applied; at the end a table of the
samples by decile of progress, and one JSON line with

``predictions``, ``unlabeled``, ``ttl_s``, ``retention_s``, ``label_delay_s``
    the run's shape (``unlabeled`` is the number of predictions that never got a label);
``rss_mb_at_ttl``
    the worker's RSS at the first sample where the applied predictions span one TTL of event time
    (``applied >= ttl_s x 1000``, i.e. 60,000 for the defaults). With ``retention + label_delay <=
    ttl`` (the defaults) the join entries are at their steady count from about there on (joined
    entries start leaving after ``label_delay + retention``, unlabeled ones after ``ttl +
    label_delay``, the watermark trailing the predictions by the label delay). Other bounded state
    keeps filling after it: the rolling metric windows (``rolling_window`` samples per model
    version and tag value per partition: 8 x 16 x 1,000 = 128,000 samples for the defaults) are
    full only after about 110,000 predictions, and the RSS, a high-water mark, settles later still;
``growth_ttl_to_second_half_mb``, ``rss_98pct_at_predictions``
    ``rss_mb_p50_second_half - rss_mb_at_ttl``, and the predictions applied at the first sample
    whose RSS reached 98 % of ``rss_mb_p50_second_half``: how long the warm-up lasted;
``rss_mb_p50_second_half``, ``rss_mb_max_second_half``, ``rss_mb_min_second_half``
    over the samples taken while the applied predictions were between 50 % and 100 % (and the
    few samples after the end);
``growth_second_half_mb``
    the Theil-Sen slope (median of pairwise slopes, robust to GC and allocator steps) of RSS against
    predictions applied over the second half, times the predictions of the second half: by how
    many MB the RSS trend grew while the second half was applied;
``range_second_half_mb``
    max - min of the RSS over the second half (noise included);
``plateau``
    ``growth_second_half_mb < --plateau-share`` (default 5 %) of ``rss_mb_p50_second_half``;
``rss_mb_final``, ``rss_mb_hwm``
    the last sample, and the kernel's high-water mark of the worker process (VmHWM);
``entries_max``, ``entries_final``, ``entries_p50_second_half``
    live join entries (Redis ``HLEN`` of the join hashes);
``expired_unlabeled``, ``retired_outcomes``
    what the worker's expiry removed (the aggregates' ``expired_unlabeled`` of whole model versions
    and the partitions' ``retired_outcomes`` counters): evidence that expiry ran;
``redis_used_mb_final``, ``redis_used_mb_max``
    Redis ``used_memory`` (it holds the join state and the dashboard's metrics history);
``elapsed_s``
    wall time of the whole run (servers, worker start-up and publishing included).

Run::

    .venv/bin/python benchmarks/memory.py [--predictions 1000000] [--ttl 60] [--retention 30]

Caveats
-------
* RSS is what the kernel reports: CPython's allocator keeps freed arenas for reuse, so RSS rises to
  the peak of the working set and stays there; a plateau means the working set stopped growing,
  not that memory was returned to the system.
* Everything (broker, Redis, the worker, this process) shares the machine's cores; the run's length
  depends on the worker's throughput (about 1.9 M input messages for the defaults).
* The embedded broker keeps every message in memory (Tansu's ``memory://`` storage): its RSS grows
  through the run and is reported at the end (``broker_rss_mb_final``) but is not the worker's.
* The watermark is the smaller of the predictions' and the labels' event-time highs per partition,
  so expiry trails the predictions by the label delay; entries therefore plateau at about
  ``(ttl + label_delay) x 1000 x unlabeled + (label_delay + retention) x 1000 x (1 - unlabeled)``
  predictions (plus the batch in flight).
* With ``--online-models`` (a spec that ignores string features, e.g. ``last_label``; ``logreg``
  cannot learn the generator's ``plan`` text feature), each model's learner keeps one
  shadow-prediction record per prediction until its first label arrives
  (``online_models/learner.py``, ``ModelLearner.pending``), bounded by a count
  (``LearnerConfig.max_pending``, 200,000 per model), not by the TTL: the unlabeled predictions'
  records pile up until that cap.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import (
    MODELS,
    Checkpoints,
    Worker,
    _proc_status_kb,
    _Sampling,
    _tail,
    make_messages,
)

from feedback_loop.kafka_admin import ensure_topics
from feedback_loop.settings import Settings

MB = 2**20
SPACING_S = 0.001  # event time between consecutive predictions (pipeline.make_messages' spacing)


# --------------------------------------------------------------------------- messages
def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def message_chunks(n: int, chunk: int, unlabeled: float, label_delay: float, seed: int,
                   start: datetime) -> Iterator[tuple[int, list[tuple[str, bytes, bytes]], int]]:
    """Yield ``(predictions in chunk, [(kind, key, value)] in event-time order, labels dropped)``.

    Predictions come from :func:`pipeline.make_messages` (1 ms apart); each label is re-timed to
    ``label_delay`` s after its prediction, or dropped with probability ``unlabeled``. A label is
    emitted just before the first prediction later than it, so labels of a chunk's last
    ``label_delay`` seconds go out with the next chunk (the last ones after the last chunk).
    """
    rng = random.Random(seed)
    waiting: collections.deque[tuple[float, bytes, bytes]] = collections.deque()
    t0 = start.timestamp()
    for c, first in enumerate(range(0, n, chunk)):
        size = min(chunk, n - first)
        preds, labels = make_messages(size, MODELS, f"mem{c:05d}", seed + c,
                                      start + timedelta(milliseconds=first))
        out: list[tuple[str, bytes, bytes]] = []
        dropped = 0
        for i in range(size):
            ts = t0 + (first + i) * SPACING_S
            while waiting and waiting[0][0] <= ts:
                _, key, value = waiting.popleft()
                out.append(("labels", key, value))
            out.append(("predictions", *preds[i]))
            if rng.random() < unlabeled:
                dropped += 1
                continue
            key, raw = labels[i]
            label = orjson.loads(raw)
            label["timestamp"] = _iso(ts + label_delay)
            waiting.append((ts + label_delay, key, orjson.dumps(label)))
        del preds, labels
        if first + size >= n:
            out.extend(("labels", key, value) for _, key, value in waiting)
            waiting.clear()
        yield size, out, dropped


class Publisher:
    """One producer for both topics; remembers each partition's end offset from the acks."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        from kafka import KafkaProducer

        self.topics = topics
        self.ends: dict[tuple[str, int], int] = {}
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5,
                                      batch_size=256 * 1024, max_request_size=4 * 1024 * 1024)

    def send(self, messages: list[tuple[str, bytes, bytes]]) -> None:
        futures = [self.producer.send(self.topics[kind], key=k, value=v) for kind, k, v in messages]
        self.producer.flush(timeout=120)
        for fut in futures:
            md = fut.get(timeout=60)
            tp = (md.topic, md.partition)
            self.ends[tp] = max(self.ends.get(tp, 0), md.offset + 1)

    def close(self) -> None:
        self.producer.close(timeout=5)


# --------------------------------------------------------------------------- sampling
class Sampler(_Sampling):
    """Every ``interval`` s: worker tree RSS, predictions applied, live join entries, Redis memory."""

    def __init__(self, settings: Settings, pid: int, interval: float) -> None:
        import psutil

        super().__init__(pid, interval, "memory-sampler")
        self.settings = settings
        self.process = psutil.Process(pid)
        self.redis = redis.Redis.from_url(settings.redis_url or "", socket_timeout=30)
        self.predictions_topic = settings.topic("predictions")
        self.samples: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def rss(self) -> int:
        import psutil

        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def sample(self) -> dict[str, Any]:
        s = self.settings
        pipe = self.redis.pipeline(transaction=False)
        for p in range(s.partitions):
            pipe.hget(s.key("meta", p), "offsets")
            pipe.hlen(s.key("join", p))
        replies = pipe.execute()
        used = int(self.redis.info("memory")["used_memory"])
        rss = self.rss()
        applied = entries = 0
        for raw, hlen in zip(replies[::2], replies[1::2]):
            applied += (orjson.loads(raw).get(self.predictions_topic, -1) + 1) if raw else 0
            entries += int(hlen)
        row = {"t": time.monotonic(), "wall": time.time(), "rss": rss, "applied": applied, "entries": entries, "redis": used}
        with self._lock:
            self.samples.append(row)
        return row

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def _tick(self) -> None:
        try:
            self.sample()
        except Exception as exc:  # noqa: BLE001  (a dead worker or Redis: report it in the main thread)
            self.error = exc
            self._stop.set()  # (no more samples)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.redis.close()


# --------------------------------------------------------------------------- statistics
def theil_sen(xs: list[float], ys: list[float], max_points: int = 1500) -> float:
    """Median of the pairwise slopes (pairs with distinct x); 0.0 when there are none."""
    if len(xs) > max_points:
        step = len(xs) / max_points
        idx = [int(i * step) for i in range(max_points)]
        xs, ys = [xs[i] for i in idx], [ys[i] for i in idx]
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    return statistics.median(slopes) if slopes else 0.0


def decile_table(samples: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    rows = []
    for d in range(10):
        lo, hi = d * n / 10, (d + 1) * n / 10
        part = [s for s in samples if lo <= s["applied"] < hi or (d == 9 and s["applied"] >= n)]
        if not part:
            continue
        rss = [s["rss"] / MB for s in part]
        rows.append({"decile": f"{10 * d:>3d}-{10 * (d + 1)}%", "samples": len(part),
                     "applied_max": max(s["applied"] for s in part), "rss_p50": statistics.median(rss),
                     "rss_max": max(rss), "entries_max": max(s["entries"] for s in part),
                     "redis_max": max(s["redis"] for s in part) / MB})
    return rows


def summarize(samples: list[dict[str, Any]], n: int, ttl: float, share: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ttl_n = round(ttl / SPACING_S)
    at_ttl = next((s for s in samples if s["applied"] >= ttl_n), None)
    out["rss_mb_at_ttl"] = None if at_ttl is None or ttl_n > n else round(at_ttl["rss"] / MB, 1)
    second = [s for s in samples if s["applied"] >= n / 2]
    if second:
        rss = [s["rss"] / MB for s in second]
        slope = theil_sen([float(s["applied"]) for s in second], rss)
        out["rss_mb_p50_second_half"] = round(statistics.median(rss), 1)
        out["rss_mb_min_second_half"] = round(min(rss), 1)
        out["rss_mb_max_second_half"] = round(max(rss), 1)
        out["growth_second_half_mb"] = round(slope * (n - n / 2), 1)
        out["range_second_half_mb"] = round(max(rss) - min(rss), 1)
        out["entries_p50_second_half"] = int(statistics.median(s["entries"] for s in second))
        out["entries_growth_second_half"] = round(
            theil_sen([float(s["applied"]) for s in second], [float(s["entries"]) for s in second]) * n / 2)
        out["plateau"] = bool(out["growth_second_half_mb"] < share * out["rss_mb_p50_second_half"])
        if out["rss_mb_at_ttl"] is not None:
            out["growth_ttl_to_second_half_mb"] = round(out["rss_mb_p50_second_half"] - out["rss_mb_at_ttl"], 1)
        level = 0.98 * out["rss_mb_p50_second_half"] * MB
        out["rss_98pct_at_predictions"] = next(s["applied"] for s in samples if s["rss"] >= level)
    else:
        out["plateau"] = None
    out["rss_mb_final"] = round(samples[-1]["rss"] / MB, 1)
    out["entries_max"] = max(s["entries"] for s in samples)
    out["entries_final"] = samples[-1]["entries"]
    out["redis_used_mb_max"] = round(max(s["redis"] for s in samples) / MB, 1)
    out["redis_used_mb_final"] = round(samples[-1]["redis"] / MB, 1)
    return out


def expiry_counts(client: redis.Redis, settings: Settings) -> dict[str, int]:
    """Unlabeled predictions expired (whole-version aggregates) and joined outcomes retired."""
    expired = retired = 0
    for p in range(settings.partitions):
        for key, raw in client.hgetall(settings.key("agg", p)).items():
            if orjson.loads(key)[2] == "":
                expired += int(orjson.loads(raw).get("expired_unlabeled", 0))
        counters = client.hget(settings.key("meta", p), "counters")
        if counters:
            retired += int(orjson.loads(counters).get("retired_outcomes", 0))
    return {"expired_unlabeled": expired, "retired_outcomes": retired}


def _rss_of(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        import psutil

        return round(psutil.Process(pid).memory_info().rss / MB, 1)
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- main
def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def wait_applied(sampler: Sampler, worker: Worker, target: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        latest = sampler.latest()
        if latest is not None and latest["applied"] >= target:
            return
        if sampler.error is not None:
            raise RuntimeError(f"sampling failed: {sampler.error!r}")
        worker.check_alive()
        if time.monotonic() > deadline:
            got = latest["applied"] if latest else 0
            raise RuntimeError(f"the worker applied {got:,} of {target:,} predictions ({what}) within "
                               f"{timeout:.0f} s\n" + _tail(worker.log_path))
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Publish predictions (some never labeled) at a fixed event-time rate to one live worker with a "
                    "short join TTL and retention, sample the worker's RSS, live join entries and Redis memory, and "
                    "say whether the RSS plateaus after the TTL. Ends with one JSON line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--predictions", type=int, default=1_000_000, help="predictions published (1 ms apart)")
    parser.add_argument("--unlabeled", type=float, default=0.10, help="share of predictions never labeled")
    parser.add_argument("--ttl", type=float, default=60.0, help="prediction_ttl_seconds (event time)")
    parser.add_argument("--retention", type=float, default=30.0, help="outcome_retention_seconds (event time)")
    parser.add_argument("--label-delay", type=float, default=5.0, help="event seconds from prediction to label")
    parser.add_argument("--chunk", type=int, default=10_000, help="predictions published per chunk")
    parser.add_argument("--lead", type=int, default=2, help="chunks the publisher may run ahead of the worker")
    parser.add_argument("--partitions", type=int, default=8, help="partitions of every topic")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--plateau-share", type=float, default=0.05,
                        help="plateau when the second half's RSS growth is below this share of its median RSS")
    parser.add_argument("--online-models", default="",
                        help="comma-separated online model specs learned for every model, e.g. last_label (see Caveats); "
                             "default none, as in the default settings")
    parser.add_argument("--chunk-timeout", type=float, default=300.0,
                        help="seconds the worker may take to catch up with one chunk")
    parser.add_argument("--seed", type=int, default=11, help="seed of the generated messages")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the worker's log here at the end")
    args = parser.parse_args(argv)
    if args.predictions < 1000:
        parser.error("--predictions must be at least 1000")
    if not 0 <= args.unlabeled < 1:
        parser.error("--unlabeled must be in [0, 1)")

    from feedback_loop.runtime.embedded import EmbeddedServers

    # Ctrl-C, SIGTERM and SIGHUP stop the worker and the servers (the finally below); SIGINT is set
    # explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    wall0 = time.monotonic()
    n = args.predictions
    start_ts = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=n * SPACING_S + 3600)
    result: dict[str, Any] = {"predictions": n, "ttl_s": args.ttl, "retention_s": args.retention,
                              "label_delay_s": args.label_delay, "partitions": args.partitions,
                              "online_models": [m for m in args.online_models.split(",") if m]}
    print(f"{n:,} predictions, {args.unlabeled:.0%} never labeled, labels {args.label_delay:g} s later, "
          f"TTL {args.ttl:g} s, retention {args.retention:g} s of event time ({n * SPACING_S:,.0f} s in all, "
          f"{n * SPACING_S / args.ttl:.1f} TTLs)", flush=True)

    with tempfile.TemporaryDirectory(prefix="fl-bench-memory-") as tmp:
        tmpdir = Path(tmp)
        servers = EmbeddedServers(data_dir=tmpdir / "servers")
        worker: Worker | None = None
        sampler: Sampler | None = None
        publisher: Publisher | None = None
        checkpoints: Checkpoints | None = None
        try:
            servers.start()
            bootstrap = servers.bootstrap
            print(f"embedded servers: kafka {bootstrap}, redis {servers.redis_url}", flush=True)
            uid = uuid.uuid4().hex[:8]
            online = {m: list(result["online_models"]) for m in MODELS} if result["online_models"] else {}
            settings = Settings(
                kafka_bootstrap=bootstrap, redis_url=servers.redis_url, topic_prefix=f"mem-{uid}.",
                app_id=f"mem-{uid}", redis_namespace=f"mem-{uid}", partitions=args.partitions,
                data_dir=tmpdir / "worker", log_level="warning", shutdown_timeout_seconds=15.0,
                signing_key=uuid.uuid4().hex + uuid.uuid4().hex,
                prediction_ttl_seconds=args.ttl, outcome_retention_seconds=args.retention,
                online_models=online)
            ensure_topics(bootstrap, list(settings.topics), args.partitions)
            checkpoints = Checkpoints(settings)
            worker = Worker(settings, tmpdir / "logs" / "worker.log")
            checkpoints.wait_heartbeat(worker, 90.0)
            sampler = Sampler(settings, worker.pid, args.interval).start()
            base = sampler.latest()
            print(f"worker pid {worker.pid} ready: RSS {base['rss'] / MB:.1f} MB, Redis "
                  f"{base['redis'] / MB:.1f} MB", flush=True)
            result["rss_mb_idle"] = round(base["rss"] / MB, 1)

            publisher = Publisher(bootstrap, {"predictions": settings.topic("predictions"),
                                              "labels": settings.topic("labels")})
            sent = unlabeled = labels = 0
            next_report = 1
            t_pub = time.monotonic()
            for size, messages, dropped in message_chunks(n, args.chunk, args.unlabeled, args.label_delay,
                                                          args.seed, start_ts):
                publisher.send(messages)
                sent += size
                unlabeled += dropped
                labels += sum(1 for kind, _, _ in messages if kind == "labels")
                del messages
                wait_applied(sampler, worker, sent - args.lead * args.chunk, args.chunk_timeout,
                             f"after publishing {sent:,}")
                latest = sampler.latest()
                while latest is not None and next_report <= 10 and latest["applied"] >= next_report * n / 10:
                    print(f"{10 * next_report:>3d}%: applied {latest['applied']:>9,} predictions, RSS "
                          f"{latest['rss'] / MB:7.1f} MB, join entries {latest['entries']:>7,}, Redis "
                          f"{latest['redis'] / MB:6.1f} MB, {time.monotonic() - t_pub:6.1f} s", flush=True)
                    next_report += 1
            checkpoints.wait(publisher.ends, worker, args.chunk_timeout, "the last predictions and labels")
            publish_s = time.monotonic() - t_pub
            sampler.sample()
            time.sleep(max(2.0, 4 * args.interval))  # a few samples of the worker idle at the end
            latest = sampler.sample()
            while next_report <= 10:
                print(f"{10 * next_report:>3d}%: applied {latest['applied']:>9,} predictions, RSS "
                      f"{latest['rss'] / MB:7.1f} MB, join entries {latest['entries']:>7,}, Redis "
                      f"{latest['redis'] / MB:6.1f} MB, {time.monotonic() - t_pub:6.1f} s", flush=True)
                next_report += 1
            result["unlabeled"] = unlabeled
            result["labels"] = labels
            result["run_s"] = round(publish_s, 1)
            result["predictions_per_s"] = round(n / publish_s, 1)
            result["rss_mb_hwm"] = round(_proc_status_kb(worker.pid, "VmHWM") * 1024 / MB, 1)
            result.update(expiry_counts(checkpoints.redis, settings))
            result["broker_rss_mb_final"] = _rss_of(servers.pids.get("kafka"))
            samples = list(sampler.samples)
        finally:
            if sampler is not None:
                sampler.stop()
            if publisher is not None:
                with contextlib.suppress(Exception):
                    publisher.close()
            if worker is not None:
                if args.keep_logs is not None:
                    with contextlib.suppress(OSError):
                        args.keep_logs.write_text(worker.log_path.read_text("utf-8", "replace"))
                worker.stop()
            if checkpoints is not None:
                checkpoints.close()
            servers.stop()

    summary = summarize(samples, n, args.ttl, args.plateau_share)
    result.update(summary)
    result["samples"] = len(samples)
    result["plateau_threshold_mb"] = (round(args.plateau_share * summary["rss_mb_p50_second_half"], 1)
                                      if "rss_mb_p50_second_half" in summary else None)
    result["elapsed_s"] = round(time.monotonic() - wall0, 1)

    print("\nworker RSS by decile of predictions applied")
    print(f"{'decile':>9} {'samples':>7} {'applied':>10} {'RSS p50 MB':>10} {'RSS max MB':>10} "
          f"{'entries max':>11} {'Redis MB':>8}")
    for row in decile_table(samples, n):
        print(f"{row['decile']:>9} {row['samples']:>7} {row['applied_max']:>10,} {row['rss_p50']:>10.1f} "
              f"{row['rss_max']:>10.1f} {row['entries_max']:>11,} {row['redis_max']:>8.1f}")
    if summary.get("plateau") is not None:
        verdict = "plateaus" if summary["plateau"] else "does NOT plateau"
        print(f"RSS {verdict}: the second half grew {summary['growth_second_half_mb']:+.1f} MB (Theil-Sen trend; "
              f"threshold {result['plateau_threshold_mb']:.1f} MB = {args.plateau_share:.0%} of "
              f"{summary['rss_mb_p50_second_half']:.1f} MB); RSS at one TTL {summary['rss_mb_at_ttl']} MB, "
              f"final {summary['rss_mb_final']} MB; wall time {result['elapsed_s']:.0f} s")
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: worker and servers stopped", file=sys.stderr)
        sys.exit(130)
