"""Throughput and latency of the whole loop against the two baselines it should be compared with.

One run generates ``--predictions`` PredictionEvents (JSON as in DESIGN.md, four models, three
regions, three features, class scores) and one LabelEvent for each, keyed by ``prediction_id``,
starts an embedded broker (Tansu) and an embedded Redis in a temporary directory, and measures on
those same message bytes:

(a) ``raw``: an ``aiokafka`` consumer assigned every partition of a predictions and a labels topic
    (pre-filled), reading from the beginning and decoding every value with ``orjson``; messages/s
    from the first fetch request (after connecting) to the last message decoded. This is the ceiling: no state, no output.
    It runs twice on each event loop (uvloop and Python's asyncio, the worker's first) and
    ``raw_per_s`` is the best of the four, so the ratios compare with the fastest read measured.
(b) ``naive_faust``: what a user would write first: a ``faust.App`` with one agent over the two
    topics and a ``Table`` counting events per model (per label source for labels), one table
    update per event, run as a subprocess worker (``python naive_app.py worker``) over the same
    pre-filled topics. The agent writes its progress (events seen, wall time of the first and of
    the latest event) to a file; events/s is measured from its first to its last event, so the
    worker's start-up and rebalance are not counted.
(c) ``pipeline``: one real feedback-loop worker (``python -m feedback_loop worker``, started like
    the integration tests start it) with the full loop (join, metrics, drift, routing; learning
    if configured). It is warmed up with ``drift_reference_size`` predictions of each model and their
    labels (every model's drift reference is then complete: its one-off calibration is done before
    the measured phases, which show the steady state) and left to go quiet, then paused
    with ``SIGSTOP`` (its whole process group) while the predictions are published, and resumed
    with ``SIGCONT``; the clock runs from the resume until the join checkpoints in Redis
    (``{ns}:meta:{p}``, field ``offsets``) show every partition's last applied offset at the end
    of the topic (taken from the producer's acks). That is the join's rate; the monitors work
    off the predictions' observations after it, so the run then waits until the worker's join
    and monitor counters stay still for 2 s and also reports the rate of the whole loop,
    ``pipeline_full_loop_predictions_per_s`` (the predictions over the join's time plus the
    monitors' lag, ``monitor_settle_after_predictions_s``: from the resume to the wall time the
    worker records when the monitors' last batch was published and checkpointed, which its
    heartbeat carries). The labels are then measured like the predictions. Both are therefore a backlog
    drained by the worker, as in (a) and (b). The worker's CPU time (user + system, all its
    threads, read from ``/proc`` every 20 ms) over the same spans gives
    ``worker_cpu_us_per_prediction`` (through the whole loop), ``..._join`` (until the join was
    done), ``worker_cpu_us_per_label_join`` and ``worker_cpu_share_whole_loop`` (CPU seconds per
    wall second: below 1, the worker waited on the broker, Redis or a busy core).

Then, with the worker running normally, ``--rate`` x ``--seconds`` more predictions of a separate
model are published and applied, the worker is left to go quiet (its join and monitor counters
still for 2 s: the monitors have worked off the backlogs' observations, reported as
``monitor_settle_s``), and their labels are sent at ``--rate`` labels/s for
``--seconds`` s while ``GET /api/models`` (served by a ``feedback-loop web`` child process, as in
production) is polled; label k's latency is the first time the model's
cumulative ``count`` is seen at ``>= k + 1`` minus the time label k was handed to the producer.
As a diagnostic that separates the worker's lag from the cost of the HTTP read, the same run also
polls the join checkpoints in Redis and reports when each label's offset was applied
(``p50_label_to_applied_ms``, ``p99_label_to_applied_ms``). The peak RSS is the worker's
process tree (``psutil``, sampled every 0.25 s, and the kernel's ``VmHWM`` high-water mark of
the worker process, whichever is larger).

Prints the ratios (c)/(a) and (c)/(b) and ends with one JSON line holding ``raw_per_s``,
``naive_faust_per_s``, ``pipeline_predictions_per_s``, ``pipeline_labels_per_s``,
``pipeline_full_loop_predictions_per_s``, ``ratio_vs_raw``, ``ratio_vs_naive``,
``p50_label_to_metric_ms``, ``p99_label_to_metric_ms`` and ``peak_rss_mb`` (plus the sizes and
timings)::

    .venv/bin/python benchmarks/pipeline.py [--predictions 50000] [--rate 2000] [--seconds 10]

Caveats
-------
* Everything (broker, Redis, the worker, the producer, this process and its HTTP server and
  poller) shares the machine's cores; on a 2-core machine the numbers are lower than on a host
  where the broker runs elsewhere, and they vary by 10-20 % from run to run.
* (c) includes the Redis round-trips of the worker's checkpoints but ends on the poll of those
  checkpoints (every 10 ms), so its time is overestimated by up to one poll interval; the
  outputs the worker publishes (outcomes, metrics, review queue) are produced but not waited for.
* The pause with ``SIGSTOP`` must stay shorter than the consumer-group session timeout, or the
  broker would evict the worker; the benchmark warns when publishing took longer than 60 % of it.
* (a) and (b) read the two topics interleaved as the broker returns them; (c) reads predictions
  first and labels after, as in production where labels come later; (a) and (b) count messages of
  both topics, (c) reports predictions/s and labels/s separately (the ratios use predictions/s).
* The latency includes up to one poll interval (``--poll-ms``, default 10 ms) of quantisation and
  the HTTP request's own time, i.e. the merge-on-read of ``/api/models``: polls run back to back,
  so when a request takes longer than the poll interval, the request time is the quantisation.
  ``poll_mean_ms`` (during the run) and ``idle_poll_ms`` (just before it) report that cost, which
  grows with the state the endpoint merges; the poller's requests also take CPU from the worker.
* The latency run's label producer lingers 5 ms (``--label-linger-ms``), as Kafka's own
  producer (since 4.0) and librdkafka do by default, so labels reach the broker in requests of a
  few each; its latency counts from the hand-over to the producer, linger included. With 0 every
  label is a request of its own: about 2,000 produce requests/s, which took the embedded broker
  a quarter more CPU (0.55 against 0.43 of a core) on this 2-core machine.
* When the worker cannot keep up with ``--rate``, labels queue and the latency grows over the
  run: the percentiles then measure the backlog, not a steady state.
* Redis rewrites its append-only file when the file has doubled since the last rewrite: it forks,
  and the child writes the whole dataset (about 100 MB here) while this machine's two cores are
  already busy, which slows Redis's replies, and so the checkpoints, for a second or two. Whether
  that lands in the 10 s latency run varies from run to run; the run reports how many rewrites it
  saw (``redis_aof_rewrites_during_latency_run``).
* The Faust baseline uses Faust's defaults (in-memory table store, changelog topic on the broker),
  as a user's first version would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from feedback_loop.kafka_admin import ensure_topics
from feedback_loop.runtime import processes
from feedback_loop.runtime.event_loop import EVENT_LOOPS, run_on
from feedback_loop.settings import Settings

MODELS = ("bench-a", "bench-b", "bench-c", "bench-d")
LATENCY_MODEL = "bench-latency"
#: linger (ms) of the latency run's label producer: the default of Kafka's own producer and librdkafka
LABEL_LINGER_MS = 5
REGIONS = ("eu", "us", "apac")
PLANS = ("free", "pro", "team")


# --------------------------------------------------------------------------- messages
def make_messages(n: int, models: tuple[str, ...], id_prefix: str, seed: int,
                  start: datetime) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """``n`` predictions and their labels as ``(key, value)`` JSON bytes (80 % of labels agree)."""
    rng = random.Random(seed)
    preds: list[tuple[bytes, bytes]] = []
    labels: list[tuple[bytes, bytes]] = []
    for i in range(n):
        pid = f"{id_prefix}-{i:07d}"
        ts = start + timedelta(milliseconds=i)
        p_yes = rng.random()
        pred = "yes" if p_yes >= 0.5 else "no"
        label = pred if rng.random() < 0.8 else ("no" if pred == "yes" else "yes")
        key = pid.encode()
        preds.append((key, orjson.dumps({
            "prediction_id": pid, "model": models[i % len(models)], "model_version": "v1",
            "timestamp": ts.isoformat().replace("+00:00", "Z"),
            "features": {"age": rng.randint(18, 90), "plan": rng.choice(PLANS),
                         "tenure_days": round(rng.random() * 1000, 1)},
            "prediction": pred, "scores": {"yes": round(p_yes, 4), "no": round(1 - p_yes, 4)},
            "tags": {"region": rng.choice(REGIONS)}})))
        labels.append((key, orjson.dumps({
            "prediction_id": pid, "label": label,
            "timestamp": (ts + timedelta(seconds=60)).isoformat().replace("+00:00", "Z"),
            "source": "bench"})))
    return preds, labels


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]],
            ends: dict[tuple[str, int], int] | None = None) -> dict[tuple[str, int], int]:
    """Publish and wait for every ack; return the end offset (last + 1) of each partition written.

    Ends come from the acks, not from ListOffsets (see tests/integration/streams/e2e_worker.py:
    Tansu's ListOffsets(latest) can fall short of the real end).
    """
    from kafka import KafkaProducer

    ends = {} if ends is None else ends
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5, batch_size=256 * 1024,
                             max_request_size=4 * 1024 * 1024)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in messages]
        producer.flush(timeout=120)
        for fut in futures:
            md = fut.get(timeout=60)
            tp = (md.topic, md.partition)
            ends[tp] = max(ends.get(tp, 0), md.offset + 1)
    finally:
        producer.close(timeout=10)
    return ends


# --------------------------------------------------------------------------- (a) raw
async def _raw(bootstrap: str, topics: list[str], partitions: int, total: int, timeout: float) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
                                fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        deadline = time.monotonic() + timeout
        loads = orjson.loads
        first = time.perf_counter()
        while seen < total:
            batches = await consumer.getmany(timeout_ms=200, max_records=50_000)
            for records in batches.values():
                for rec in records:
                    loads(rec.value)
                seen += len(records)
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw consumer: {seen} of {total} messages within {timeout:.0f} s")
        return total / (time.perf_counter() - first)
    finally:
        await consumer.stop()


def raw_ceiling(bootstrap: str, topics: list[str], partitions: int, total: int, timeout: float,
                first: str) -> dict[str, float]:
    """(a): the best rate of two passes of :func:`_raw` on each event loop, by loop, the loop
    ``first`` first (a process's first consumer pays a one-off start-up of some 50 ms)."""
    loops = [first] + [name for name in EVENT_LOOPS if name != first]
    best: dict[str, float] = {}
    for name in loops * 2:
        rate = run_on(name, _raw(bootstrap, topics, partitions, total, timeout))
        best[name] = max(best.get(name, 0.0), rate)
    return best


# --------------------------------------------------------------------------- (b) naive Faust
NAIVE_APP = '''
"""A user's first Faust app: one agent, one table update per event (written by benchmarks/pipeline.py)."""
import json
import os
import time

import faust

BOOTSTRAP = os.environ["NAIVE_BOOTSTRAP"]
PROGRESS = os.environ["NAIVE_PROGRESS"]
TOTAL = int(os.environ["NAIVE_TOTAL"])

app = faust.App(os.environ["NAIVE_APP_ID"], broker="kafka://" + BOOTSTRAP, store="memory://",
                datadir=os.environ["NAIVE_DATADIR"], topic_partitions=int(os.environ["NAIVE_PARTITIONS"]),
                topic_replication_factor=1, consumer_auto_offset_reset="earliest", web_enabled=False)
events = app.topic(os.environ["NAIVE_PREDICTIONS"], os.environ["NAIVE_LABELS"],
                   key_type=bytes, value_serializer="json")
counts = app.Table("counts", default=int)
state = {"n": 0, "first": None}


def report(now):
    tmp = PROGRESS + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"n": state["n"], "first": state["first"], "last": now}, fh)
    os.replace(tmp, PROGRESS)


@app.agent(events)
async def count(stream):
    async for event in stream:
        if "model" in event:
            counts[event["model"]] += 1
        else:
            counts["label:" + event.get("source", "")] += 1
        now = time.time()
        if state["first"] is None:
            state["first"] = now
        state["n"] += 1
        if state["n"] % 1000 == 0 or state["n"] >= TOTAL:
            report(now)


if __name__ == "__main__":
    app.main()
'''


def run_naive(bootstrap: str, topics: list[str], partitions: int, total: int, workdir: Path,
              timeout: float) -> tuple[float, dict[str, Any]]:
    script = workdir / "naive_app.py"
    script.write_text(textwrap.dedent(NAIVE_APP))
    progress = workdir / "naive-progress.json"
    env = {**os.environ, "NAIVE_BOOTSTRAP": bootstrap, "NAIVE_PROGRESS": str(progress),
           "NAIVE_TOTAL": str(total), "NAIVE_APP_ID": f"naive-{uuid.uuid4().hex[:8]}",
           "NAIVE_DATADIR": str(workdir / "naive-data"), "NAIVE_PARTITIONS": str(partitions),
           "NAIVE_PREDICTIONS": topics[0], "NAIVE_LABELS": topics[1]}
    log = workdir / "logs" / "naive-faust.log"
    proc = processes.spawn([sys.executable, str(script), "worker", "-l", "warn", "--without-web"],
                           env=env, log_path=log, cwd=str(workdir))
    try:
        deadline = time.monotonic() + timeout
        got: dict[str, Any] = {}
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"naive Faust worker exited with {proc.returncode}; see {log}:\n"
                                   + _tail(log))
            with contextlib.suppress(OSError, ValueError):
                got = orjson.loads(progress.read_bytes())
            if got.get("n", 0) >= total:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"naive Faust worker: {got.get('n', 0)} of {total} events within "
                                   f"{timeout:.0f} s; see {log}:\n" + _tail(log))
            time.sleep(0.1)
        rate = (got["n"] - 1) / max(got["last"] - got["first"], 1e-9)
        return rate, got
    finally:
        processes.stop(proc, 15.0)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- (c) the pipeline
class _Sampling:
    """Calls ``sample()`` once at :meth:`start`, then every ``interval`` s in a thread until :meth:`stop`."""

    def __init__(self, pid: int, interval: float, name: str) -> None:
        self.pid = pid
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> Any:
        raise NotImplementedError

    def _tick(self) -> None:
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()

    def start(self) -> Any:
        self.sample()
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


class RssSampler(_Sampling):
    """Samples the RSS of a process tree every ``interval`` s in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(pid, interval, "rss")
        self.peak = 0
        self.samples: list[tuple[float, int]] = []

    def sample(self) -> int:
        try:
            import psutil
        except ImportError:
            psutil = None
        if psutil is None:
            rss = _proc_status_kb(self.pid, "VmRSS") * 1024
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic(), rss))
            return rss
        try:
            root = psutil.Process(self.pid)
            rss = 0
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    rss += proc.memory_info().rss
        except psutil.Error:  # the worker exited: keep the peak seen so far
            return self.peak
        self.peak = max(self.peak, rss)
        self.samples.append((time.monotonic(), rss))
        return rss


class CpuClock(_Sampling):
    """The CPU time (user + system, every thread) a process has used, read from ``/proc`` every
    ``interval`` s in a thread with the wall time, so the CPU used up to a past moment (the
    worker's heartbeat says when its monitors were done) can be read off afterwards."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(pid, interval, "cpu")
        self.samples: list[tuple[float, float]] = []

    def read(self) -> float:
        """CPU seconds used so far (``/proc/<pid>/stat``, fields ``utime`` and ``stime``)."""
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sample(self) -> float:
        cpu = self.read()
        self.samples.append((time.time(), cpu))
        return cpu

    def at(self, wall: float) -> float:
        """CPU seconds used by wall time ``wall`` (linear between the samples around it)."""
        if wall >= max(self.samples)[0]:
            self.sample()
        before = [s for s in self.samples if s[0] <= wall]
        after = [s for s in self.samples if s[0] >= wall]
        if not before or not after:
            raise ValueError(f"no CPU samples around {wall}")
        (t0, c0), (t1, c1) = max(before), min(after)
        return c0 if t1 == t0 else c0 + (c1 - c0) * (wall - t0) / (t1 - t0)

    def _tick(self) -> None:
        with contextlib.suppress(OSError):  # (the worker exited: at() says so when asked)
            self.sample()


def _proc_status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Worker:
    """One ``python -m feedback_loop worker`` child, like the integration tests' WorkerProcess."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc = processes.spawn([sys.executable, "-m", "feedback_loop", "worker"],
                                    env={**os.environ, **settings.to_env()}, log_path=log_path, cwd=str(ROOT))
        self.paused = False

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}:\n"
                               + _tail(self.log_path))

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        self.paused = sig == signal.SIGSTOP

    def stop(self) -> None:
        if self.paused:
            self.signal(signal.SIGCONT)
        processes.stop(self.proc, self.settings.shutdown_timeout_seconds)


class Checkpoints:
    """Reads the join checkpoints' last applied offsets (as ``feedback_loop.lockstep`` does)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url or "")

    def applied(self) -> list[dict[str, int]]:
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.settings.partitions):
            pipe.hget(self.settings.key("meta", p), "offsets")
        return [orjson.loads(raw) if raw else {} for raw in pipe.execute()]

    def caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        applied = self.applied()
        return all(applied[p].get(topic, -1) >= end - 1 for (topic, p), end in ends.items() if end)

    def wait(self, ends: dict[tuple[str, int], int], worker: Worker, timeout: float, what: str,
             interval: float = 0.01) -> float:
        """Wait until ``ends`` are applied; return the monotonic time it was seen."""
        deadline = time.monotonic() + timeout
        while True:
            if self.caught_up(ends):
                return time.monotonic()
            worker.check_alive()
            if time.monotonic() > deadline:
                behind = {f"{t}[{p}]": (self.applied()[p].get(t, -1), e - 1) for (t, p), e in ends.items()}
                raise RuntimeError(f"the worker did not apply {what} within {timeout:.0f} s "
                                   f"(applied, wanted): {behind}\n" + _tail(worker.log_path))
            time.sleep(interval)

    def wait_heartbeat(self, worker: Worker, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker.check_alive()
            keys = list(self.redis.scan_iter(match=self.settings.key("workers", "*"), count=500))
            for raw in self.redis.mget(keys) if keys else []:
                if raw and orjson.loads(raw).get("pid") == worker.pid:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"no heartbeat from the worker within {timeout:.0f} s\n" + _tail(worker.log_path))

    def done_at(self, worker: Worker, agent: str = "monitor") -> float | None:
        """The wall time at which the worker's ``agent`` last published and saved a batch (from
        its heartbeat)."""
        keys = list(self.redis.scan_iter(match=self.settings.key("workers", "*"), count=500))
        for raw in self.redis.mget(keys) if keys else []:
            beat = orjson.loads(raw) if raw else {}
            if beat.get("pid") == worker.pid:
                return (beat.get("done_at") or {}).get(agent)
        return None

    def wait_quiet(self, worker: Worker, quiet: float, timeout: float) -> float:
        """Wait until the worker's event counters (join and monitor) stay still for ``quiet`` s:
        the monitors have worked off the observations of the backlogs; return the seconds waited."""
        started = time.monotonic()
        last, since = None, time.monotonic()
        while time.monotonic() - started < timeout:
            worker.check_alive()
            keys = list(self.redis.scan_iter(match=self.settings.key("workers", "*"), count=500))
            beats = [orjson.loads(raw) for raw in (self.redis.mget(keys) if keys else []) if raw]
            events = sorted((b.get("events") or {}).items() for b in beats if b.get("pid") == worker.pid)
            if events != last:
                last, since = events, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return time.monotonic() - started - quiet
            time.sleep(0.25)
        raise RuntimeError(f"the worker did not go quiet within {timeout:.0f} s\n" + _tail(worker.log_path))

    def aof_rewrites(self) -> int:
        """Rewrites of Redis's append-only file so far: the server's forks (the embedded Redis takes
        no RDB snapshots and has no replicas, so a rewrite is its only reason to fork)."""
        return int(self.redis.info("stats")["total_forks"])

    def close(self) -> None:
        self.redis.close()


def timed_backlog(servers_bootstrap: str, settings: Settings, worker: Worker, checkpoints: Checkpoints,
                  kind: str, messages: list[tuple[bytes, bytes]], ends: dict[tuple[str, int], int],
                  timeout: float) -> tuple[float, float, float]:
    """Pause the worker, publish ``messages`` on ``kind``, resume it; (messages/s, publish seconds,
    wall time of the resume)."""
    worker.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        topic = settings.topic(kind)
        mine = produce(servers_bootstrap, topic, messages)
        published = time.monotonic() - started
        if published > 0.6 * settings.broker_session_timeout:
            print(f"  warning: publishing {kind} took {published:.1f} s with the worker paused, over 60% of "
                  f"the {settings.broker_session_timeout:.0f} s session timeout: the broker may rebalance",
                  flush=True)
    finally:
        worker.signal(signal.SIGCONT)
    t0, resumed = time.monotonic(), time.time()
    for tp, end in mine.items():
        ends[tp] = max(ends.get(tp, 0), end)
    t1 = checkpoints.wait({tp: ends[tp] for tp in ends if tp[0] == topic}, worker, timeout, kind)
    return len(messages) / (t1 - t0), published, resumed


class WebProcess:
    """``python -m feedback_loop web`` as a child process, as production runs it beside the workers."""

    def __init__(self, settings: Settings, log_path: Path, timeout: float = 30.0) -> None:
        self.settings = settings
        self.port = processes.free_port()
        self.log_path = log_path
        self.proc = processes.spawn([sys.executable, "-m", "feedback_loop", "web", "--web-port", str(self.port)],
                                    env={**os.environ, **settings.to_env()}, log_path=log_path, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/models", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the web process did not answer within {timeout:.0f} s\n" + _tail(log_path))
            time.sleep(0.1)

    def stop(self) -> None:
        processes.stop(self.proc, self.settings.shutdown_timeout_seconds)


async def latency_run(settings: Settings, labels: list[tuple[bytes, bytes]], rate: float, poll_ms: float,
                      worker: Worker, timeout: float, stats: dict[str, Any], web_log: Path,
                      linger_ms: int = LABEL_LINGER_MS) -> list[float]:
    """Send ``labels`` at ``rate``/s; return each label's seconds from send to metric readable.

    Also fills ``stats``: ``outcomes_counted`` (cumulative count of the throughput run's models
    before the run, a check that every labeled prediction was counted once), ``polls`` and
    ``poll_seconds`` (the HTTP requests made and their total time).
    The HTTP API is a ``feedback-loop web`` child process, as in production; the sender and the
    pollers share this process's event loop.
    """
    web = await asyncio.to_thread(WebProcess, settings, web_log)
    try:
        return await _latency_run(settings, labels, rate, poll_ms, worker, timeout, stats, web.port,
                                  linger_ms)
    finally:
        await asyncio.to_thread(web.stop)


async def _latency_run(settings: Settings, labels: list[tuple[bytes, bytes]], rate: float, poll_ms: float,
                       worker: Worker, timeout: float, stats: dict[str, Any], port: int,
                       linger_ms: int) -> list[float]:
    from collections import deque

    import aiohttp
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=linger_ms, acks=1)
    await producer.start()
    n = len(labels)
    sent_at: list[float] = [0.0] * n
    seen_at: list[float | None] = [None] * n
    topic = settings.topic("labels")
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/api/models"

            async def count(models: tuple[str, ...] = (LATENCY_MODEL,)) -> int:
                t = time.perf_counter()
                async with http.get(url) as resp:
                    rows = orjson.loads(await resp.read())
                stats["polls"] += 1
                stats["poll_seconds"] += time.perf_counter() - t
                return sum(int(r.get("count", 0)) for r in rows if r.get("model") in models
                           and r.get("window") == "cumulative" and not r.get("segment"))

            stats["outcomes_counted"] = await count(MODELS)
            base = await count()
            stats["polls"], stats["poll_seconds"] = 0, 0.0
            for _ in range(10):
                await count()
            stats["idle_poll_ms"] = 1000 * stats["poll_seconds"] / stats["polls"]
            stats["polls"], stats["poll_seconds"] = 0, 0.0
            done = asyncio.Event()

            async def sender() -> None:
                start = time.monotonic()
                for k, (key, value) in enumerate(labels):
                    due = start + k / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent_at[k] = time.monotonic()
                    futs.append(await producer.send(topic, value=value, key=key))  # acked in the background
                stats["send_seconds"] = time.monotonic() - start
                await producer.flush()

            async def poller() -> None:
                first_unseen = 0
                deadline = time.monotonic() + n / rate + timeout
                while first_unseen < n:
                    got = await count() - base
                    now = time.monotonic()
                    while first_unseen < min(got, n):
                        if sent_at[first_unseen]:
                            seen_at[first_unseen] = now
                        first_unseen += 1
                    if now > deadline:
                        worker.check_alive()
                        raise RuntimeError(f"latency run: metrics count {got} of {n} labels within "
                                           f"{timeout:.0f} s after the last send")
                    await asyncio.sleep(poll_ms / 1000)
                done.set()

            async def applied_poller() -> None:
                """When each label's offset shows in its partition's join checkpoint (no HTTP)."""
                pending: list[deque[tuple[int, int]]] = [deque() for _ in range(settings.partitions)]
                resolved = seen = 0
                deadline = time.monotonic() + n / rate + timeout
                while seen < n and time.monotonic() < deadline:
                    while resolved < len(futs) and futs[resolved].done():
                        md = futs[resolved].result()
                        pending[md.partition].append((md.offset, resolved))
                        resolved += 1
                    pipe = rds.pipeline(transaction=False)
                    for p in range(settings.partitions):
                        pipe.hget(settings.key("meta", p), "offsets")
                    t = time.monotonic()
                    raws = await pipe.execute()
                    now = time.monotonic()
                    stats["redis_polls"] = stats.get("redis_polls", 0) + 1
                    stats["redis_seconds"] = stats.get("redis_seconds", 0.0) + now - t
                    stats["redis_max_seconds"] = max(stats.get("redis_max_seconds", 0.0), now - t)
                    for p, raw in enumerate(raws):
                        done_to = orjson.loads(raw).get(topic, -1) if raw else -1
                        queue = pending[p]
                        while queue and queue[0][0] <= done_to:
                            applied_at[queue.popleft()[1]] = now
                            seen += 1
                    await asyncio.sleep(poll_ms / 1000)

            futs: list[Any] = []
            applied_at: list[float | None] = [None] * n
            rds = aioredis.Redis.from_url(settings.redis_url or "")
            try:
                await asyncio.gather(sender(), poller(), applied_poller())
            finally:
                await rds.aclose()
            stats["applied_latencies"] = [a - t for a, t in zip(applied_at, sent_at) if a is not None]
    finally:
        await producer.stop()
    return [s - t for s, t in zip(seen_at, sent_at) if s is not None]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure (a) raw aiokafka consume + orjson decode, (b) a naive per-event Faust agent with "
                    "a table, (c) one feedback-loop worker (join, metrics, drift, routing) on the same generated "
                    "messages, and the label-to-metric latency over HTTP at a fixed label rate. Starts and stops "
                    "an embedded broker and Redis. Ends with one JSON line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--predictions", type=int, default=50_000, help="predictions (each with one label)")
    parser.add_argument("--rate", type=float, default=2000.0, help="labels/s of the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run (s)")
    parser.add_argument("--partitions", type=int, default=8, help="partitions of every topic")
    parser.add_argument("--label-linger-ms", type=int, default=LABEL_LINGER_MS,
                        help="linger of the latency run's label producer (ms; 5 is the default of Kafka's "
                             "own producer since 4.0 and of librdkafka; 0 sends every label in a request "
                             "of its own); the latency counts it")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="poll interval of /api/models in the latency run")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated messages")
    parser.add_argument("--skip-naive", action="store_true", help="skip (b), the Faust baseline")
    args = parser.parse_args(argv)
    if args.predictions < 100:
        parser.error("--predictions must be at least 100")

    from feedback_loop.runtime.embedded import EmbeddedServers

    wall0 = time.monotonic()
    n = args.predictions
    parts = args.partitions
    start_ts = datetime.now(timezone.utc) - timedelta(hours=1)
    print(f"generating {n:,} predictions and {n:,} labels ...", flush=True)
    preds, labels = make_messages(n, MODELS, "bp", args.seed, start_ts)
    # The warm-up fills each model's drift reference (its one-off calibration is not steady state)
    configured = Settings()  # FEEDBACK_LOOP_* of this environment, which the worker inherits
    warm_n = max(25 * parts, len(MODELS) * configured.drift_reference_size)
    warm_preds, warm_labels = make_messages(warm_n, MODELS, "warm", args.seed + 1,
                                            start_ts - timedelta(minutes=5))
    n_lat = max(1, int(args.rate * args.seconds))
    lat_preds, lat_labels = make_messages(n_lat, (LATENCY_MODEL,), "lat", args.seed + 2,
                                          start_ts + timedelta(milliseconds=n + 1000))
    bench_timeout = max(120.0, n / 500)
    result: dict[str, Any] = {"predictions": n, "labels": n, "partitions": parts}

    with tempfile.TemporaryDirectory(prefix="fl-bench-pipeline-") as tmp:
        tmpdir = Path(tmp)
        servers = EmbeddedServers(data_dir=tmpdir / "servers")
        worker: Worker | None = None
        sampler: RssSampler | None = None
        clock: CpuClock | None = None
        checkpoints: Checkpoints | None = None
        try:
            servers.start()
            bootstrap = servers.bootstrap
            print(f"embedded servers: kafka {bootstrap}, redis {servers.redis_url}", flush=True)

            # (a) and (b) read the same bytes from topics of their own
            uid = uuid.uuid4().hex[:8]
            base_topics = [f"bench-{uid}.predictions", f"bench-{uid}.labels"]
            ensure_topics(bootstrap, base_topics, parts)
            t = time.monotonic()
            produce(bootstrap, base_topics[0], preds)
            produce(bootstrap, base_topics[1], labels)
            print(f"published {2 * n:,} messages for the baselines in {time.monotonic() - t:.1f} s", flush=True)

            event_loop = configured.event_loop
            best = raw_ceiling(bootstrap, base_topics, parts, 2 * n, bench_timeout, event_loop)
            raw = max(best.values())
            result["raw_per_s"] = round(raw, 1)
            result["raw_per_s_by_event_loop"] = {name: round(rate, 1) for name, rate in best.items()}
            print(f"(a) raw aiokafka consume + orjson decode: {raw:,.0f} messages/s (the best of two passes "
                  "on each event loop: " + ", ".join(f"{name} {rate:,.0f}" for name, rate in best.items())
                  + f"; the worker runs on {event_loop})", flush=True)

            if args.skip_naive:
                result["naive_faust_per_s"] = None
            else:
                naive, got = run_naive(bootstrap, base_topics, parts, 2 * n, tmpdir, max(bench_timeout, n / 200))
                result["naive_faust_per_s"] = round(naive, 1)
                print(f"(b) naive Faust agent + table, per event: {naive:,.0f} events/s "
                      f"({got['n']:,} events in {got['last'] - got['first']:.1f} s)", flush=True)

            # (c) one real worker
            settings = Settings(
                kafka_bootstrap=bootstrap, redis_url=servers.redis_url, topic_prefix=f"bp-{uid}.",
                app_id=f"bp-{uid}", redis_namespace=f"bp-{uid}", partitions=parts,
                data_dir=tmpdir / "worker", log_level="warning", shutdown_timeout_seconds=15.0,
                signing_key=uuid.uuid4().hex + uuid.uuid4().hex)
            ensure_topics(bootstrap, list(settings.topics), parts)
            checkpoints = Checkpoints(settings)
            worker = Worker(settings, tmpdir / "logs" / "worker.log")
            sampler = RssSampler(worker.pid).start()
            clock = CpuClock(worker.pid).start()
            checkpoints.wait_heartbeat(worker, 90.0)
            ends: dict[tuple[str, int], int] = {}
            produce(bootstrap, settings.topic("predictions"), warm_preds, ends)
            produce(bootstrap, settings.topic("labels"), warm_labels, ends)
            warm_started = time.monotonic()
            checkpoints.wait(ends, worker, 90.0, "the warm-up events")
            checkpoints.wait_quiet(worker, 2.0, bench_timeout)
            print(f"worker pid {worker.pid} ready and warmed up ({len(warm_preds):,} predictions + labels, "
                  f"{len(warm_preds) // len(MODELS):,} per model: each drift reference is complete and "
                  f"calibrated, which took the monitors {time.monotonic() - warm_started - 2.0:.1f} s once)",
                  flush=True)

            p_rate, p_pub, resumed = timed_backlog(bootstrap, settings, worker, checkpoints, "predictions", preds,
                                                   ends, bench_timeout)
            print(f"(c) pipeline, predictions: {p_rate:,.0f}/s (published in {p_pub:.1f} s with the worker "
                  f"paused)", flush=True)
            # the monitors (drift, routing, learning) finish those predictions' observations later
            checkpoints.wait_quiet(worker, 2.0, bench_timeout)
            done = checkpoints.done_at(worker)
            if done is None:
                raise RuntimeError("the worker's heartbeat says no monitor batch was done\n" + _tail(worker.log_path))
            settle_p = max(0.0, done - resumed - n / p_rate)
            full = n / (n / p_rate + settle_p)
            result["monitor_settle_after_predictions_s"] = round(settle_p, 2)
            result["pipeline_full_loop_predictions_per_s"] = round(full, 1)
            print(f"(c) pipeline, predictions through the whole loop (the monitors done {settle_p:.2f} s after the "
                  f"join): {full:,.0f}/s", flush=True)
            # the worker's CPU per prediction: what the rate would be with a core of its own
            cpu_resumed = clock.at(resumed)
            cpu_join = clock.at(resumed + n / p_rate) - cpu_resumed
            cpu_full = clock.at(done) - cpu_resumed
            result["worker_cpu_us_per_prediction_join"] = round(1e6 * cpu_join / n, 1)
            result["worker_cpu_us_per_prediction"] = round(1e6 * cpu_full / n, 1)
            result["worker_cpu_share_whole_loop"] = round(cpu_full / max(1e-9, done - resumed), 2)
            print(f"(c) the worker's CPU: {result['worker_cpu_us_per_prediction']:.1f} us per prediction through "
                  f"the whole loop ({result['worker_cpu_us_per_prediction_join']:.1f} us until the join was done), "
                  f"{result['worker_cpu_share_whole_loop']:.2f} of a core", flush=True)
            l_rate, l_pub, l_resumed = timed_backlog(bootstrap, settings, worker, checkpoints, "labels", labels,
                                                     ends, bench_timeout)
            result["worker_cpu_us_per_label_join"] = round(
                1e6 * (clock.at(l_resumed + n / l_rate) - clock.at(l_resumed)) / n, 1)
            print(f"(c) pipeline, labels:      {l_rate:,.0f}/s (published in {l_pub:.1f} s with the worker "
                  f"paused; the worker's CPU {result['worker_cpu_us_per_label_join']:.1f} us per label until the "
                  f"join was done)", flush=True)
            result["pipeline_predictions_per_s"] = round(p_rate, 1)
            result["pipeline_labels_per_s"] = round(l_rate, 1)
            result["pipeline_events_per_s"] = round(2 * n / (n / p_rate + n / l_rate), 1)

            # latency at a fixed label rate
            produce(bootstrap, settings.topic("predictions"), lat_preds, ends)
            checkpoints.wait(ends, worker, bench_timeout, "the latency run's predictions")
            settle = checkpoints.wait_quiet(worker, 2.0, bench_timeout)
            result["monitor_settle_s"] = round(settle, 1)
            print(f"the monitors worked off the backlogs' observations {settle:.1f} s later", flush=True)
            print(f"latency run: {n_lat:,} labels at {args.rate:,.0f}/s (producer linger "
                  f"{args.label_linger_ms} ms) ...", flush=True)
            stats: dict[str, Any] = {"polls": 0, "poll_seconds": 0.0}
            rewrites_before = checkpoints.aof_rewrites()
            lat = asyncio.run(latency_run(settings, lat_labels, args.rate, args.poll_ms, worker, 60.0, stats,
                                          tmpdir / "logs" / "web.log", linger_ms=args.label_linger_ms))
            # (a rewrite slows Redis's replies for a second or two: see the caveats in the module doc)
            result["redis_aof_rewrites_during_latency_run"] = checkpoints.aof_rewrites() - rewrites_before
            expected = n + len(warm_labels)
            result["outcomes_counted"] = stats["outcomes_counted"]
            result["outcomes_expected"] = expected
            result["poll_mean_ms"] = round(1000 * stats["poll_seconds"] / max(1, stats["polls"]), 2)
            result["idle_poll_ms"] = round(stats["idle_poll_ms"], 2)
            result["label_linger_ms"] = args.label_linger_ms
            result["latency_rate_achieved"] = round((n_lat - 1) / max(stats["send_seconds"], 1e-9), 1)
            check = "ok" if stats["outcomes_counted"] == expected else "MISMATCH"
            print(f"cumulative count of the throughput models over HTTP: {stats['outcomes_counted']:,} "
                  f"(expected {expected:,}: {check})", flush=True)
            ms = [x * 1000 for x in lat]
            applied_ms = [x * 1000 for x in stats["applied_latencies"]]
            result["checkpoint_poll_mean_ms"] = round(
                1000 * stats.get("redis_seconds", 0.0) / max(1, stats.get("redis_polls", 0)), 2)
            result["checkpoint_poll_max_ms"] = round(1000 * stats.get("redis_max_seconds", 0.0), 2)
            if applied_ms:
                result["p50_label_to_applied_ms"] = round(quantile(applied_ms, 0.50), 1)
                result["p99_label_to_applied_ms"] = round(quantile(applied_ms, 0.99), 1)
                print(f"label -> applied in the join checkpoint (Redis, no HTTP): p50 "
                      f"{result['p50_label_to_applied_ms']:.1f} ms, p99 {result['p99_label_to_applied_ms']:.1f} ms "
                      f"({len(applied_ms):,} labels; checkpoint reads took "
                      f"{result['checkpoint_poll_mean_ms']:.1f} ms on average, "
                      f"{result['checkpoint_poll_max_ms']:.1f} ms at most)", flush=True)
            result["latency_labels"] = len(ms)
            result["p50_label_to_metric_ms"] = round(quantile(ms, 0.50), 1)
            result["p99_label_to_metric_ms"] = round(quantile(ms, 0.99), 1)
            result["max_label_to_metric_ms"] = round(max(ms), 1)
            print(f"label -> metric over HTTP: p50 {result['p50_label_to_metric_ms']:.1f} ms, "
                  f"p99 {result['p99_label_to_metric_ms']:.1f} ms, max {result['max_label_to_metric_ms']:.1f} ms "
                  f"({len(ms):,} labels; {stats['polls']:,} polls of /api/models, "
                  f"{result['poll_mean_ms']:.1f} ms each on average, {result['idle_poll_ms']:.1f} ms before the run; "
                  f"labels sent at {result['latency_rate_achieved']:,.0f}/s)", flush=True)
            print(f"Redis append-only file rewrites during the latency run: "
                  f"{result['redis_aof_rewrites_during_latency_run']}", flush=True)

            sampler.sample()
            hwm = _proc_status_kb(worker.pid, "VmHWM") * 1024
            result["peak_rss_mb"] = round(max(sampler.peak, hwm) / 2**20, 1)
        finally:
            if sampler is not None:
                sampler.stop()
            if clock is not None:
                clock.stop()
            if worker is not None:
                worker.stop()
            if checkpoints is not None:
                checkpoints.close()
            servers.stop()

    naive = result.get("naive_faust_per_s")
    for prefix, rate in (("", result["pipeline_predictions_per_s"]),
                         ("full_loop_", result["pipeline_full_loop_predictions_per_s"])):
        result[f"{prefix}ratio_vs_raw"] = round(rate / result["raw_per_s"], 4)
        result[f"{prefix}ratio_vs_naive"] = round(rate / naive, 2) if naive else None
    result["wall_seconds"] = round(time.monotonic() - wall0, 1)
    print(f"(c)/(a) predictions/s vs raw:   {result['ratio_vs_raw']:.3f} "
          f"(whole loop {result['full_loop_ratio_vs_raw']:.3f})")
    if result["ratio_vs_naive"] is not None:
        print(f"(c)/(b) predictions/s vs naive: {result['ratio_vs_naive']:.2f}x "
              f"(whole loop {result['full_loop_ratio_vs_naive']:.2f}x)")
    print(f"peak RSS of the worker: {result['peak_rss_mb']:.1f} MB; wall time {result['wall_seconds']:.0f} s")
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
