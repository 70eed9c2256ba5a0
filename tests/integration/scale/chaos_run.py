"""The chaos run shared by ``test_workers_chaos.py`` and ``benchmarks/chaos.py``.

Worker processes share the input partitions of one consumer group while a seeded stream of
predictions and labels (``e2e_stream``, without its order-sensitive cases) is produced in chunks.
The first chunk goes out before anything happens; each later chunk goes out around one change of
the group's membership (a random part of it just before, while the workers are busy with it, the
rest right after, while the group rebalances). The changes, in this order:

* ``kills`` times: a random worker of the core set is killed with SIGKILL, and after a short
  pause a new one takes its place (so the core set stays at ``core`` workers);
* ``scale_cycles`` times: one extra worker is added, then removed with SIGTERM (a bounded,
  graceful stop that must exit with code 0).

After each change the run waits for the group to settle again (below) and records how long
that took. Then it waits until every input message is committed, sends one far-future sentinel
per partition (expiry becomes deterministic, as in ``test_join_end_to_end``), reads the outputs
until they are quiet and checks them against the offline reference (``e2e_reference``):

* per prediction id the distinct revisions are exactly 1..k and the last one is the reference's
  final outcome; an outcome for every labeled prediction and for nothing else;
* an outcome republished with the same (prediction id, revision), which at-least-once delivery
  allows after a kill, must be a byte-identical copy of the first publication;
* one dead letter per malformed message (republished copies allowed);
* ``GET /api/models`` equals the reference metrics (counts exact, rates ``rel_tol=1e-9``).

Rebalance times come from the workers' heartbeats in Redis (``{ns}:workers:{owner}``, written
every second with the partitions of the input topics the worker's consumer is assigned). A
:class:`Membership` thread samples them every 0.25 s, counting only workers whose process is
alive (a worker counts as gone from the moment the run decides to kill it, or once a removed
one exited), and records

* ``longest_uncovered_s``: the longest stretch during which some input partition was assigned to
  no live worker (a killed worker's partitions stay orphaned until the group notices; a stopped
  one's until the group rebalanced without it);
* per change, ``settled_s``: from the change (the spawn of the first ``core`` workers, all at
  once; the SIGKILL; the spawn of the added worker; the SIGTERM) until the first sample in which every live worker holds at least one partition, no
  partition is held twice and all partitions are held (for a removal, the first such sample
  taken after the worker exited). For a kill this includes the pause and
  the start-up of the replacement (Python imports, Faust start), so it is an upper bound of the
  rebalance itself; ``startup_s`` says how much of it the replacement's start-up took.

``longest_rebalance_s`` is the larger of the longest uncovered stretch and the longest
``settled_s``.

Importable as ``chaos_run`` once ``tests/integration/streams`` and this directory are on
``sys.path`` (the scale ``conftest.py`` and the benchmark put them there).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import e2e_reference as reference
import redis
from e2e_stream import Msg, generate
from e2e_worker import WorkerProcess
from test_join_end_to_end import (
    JOIN_SETTINGS,
    SENTINEL,
    Problems,
    check_dead_letters,
    check_outcomes,
    check_snapshots,
    drain_and_read,
    final_outcomes,
    observed_metrics,
    produce,
)

from feedback_loop.settings import Settings

__all__ = ["CHAOS_SETTINGS", "ChaosResult", "Membership", "drain_and_check", "run_chaos"]

#: Join settings of the chaos run: the acceptance test's (TTL longer than the stream, sentinels
#: retire everything) and a small rolling window, so that the window's eviction is exercised.
CHAOS_SETTINGS: dict[str, Any] = {**JOIN_SETTINGS, "rolling_window": 300}

#: A change that has not settled after this long fails the run at once (the limit asserted on
#: the recorded times is 60 s; this only bounds the wait).
SETTLE_TIMEOUT = 120.0


# --------------------------------------------------------------------------- membership monitor
@dataclass
class Sample:
    t: float
    covered: bool
    settled: bool
    held: dict[int, list[int]]  # pid -> partitions, live workers only


@dataclass
class Change:
    """One membership change and how long the group took to settle after it."""

    kind: str                      # "start" (the first workers, together) | "kill" | "add" | "remove"
    pid: int                       # the worker killed, added or removed (start: the first one)
    at: float                      # monotonic time of the change
    replacement: int | None = None  # kill: the worker started in its place
    exit_code: int | None = None   # kill / remove: how the worker ended
    stop_s: float | None = None    # remove: SIGTERM until exit
    startup_s: float | None = None  # kill / add: spawn of the new worker until its first heartbeat
    covered_s: float | None = None  # until every partition was held by a live worker again
    settled_s: float | None = None  # until the group settled (see module doc)


class Membership:
    """Samples the heartbeats of the tracked, live workers in a background thread."""

    def __init__(self, settings: Settings, interval: float = 0.25) -> None:
        self.settings = settings
        self.interval = interval
        self.client = redis.Redis.from_url(settings.redis_url or "", socket_timeout=5, socket_connect_timeout=5)
        self.workers: list[WorkerProcess] = []
        self.gone: set[int] = set()
        self.first_beat: dict[int, float] = {}
        self.samples: list[Sample] = []
        self.armed_at: float | None = None
        self.uncovered_since: float | None = None
        self.uncovered: list[tuple[float, float]] = []  # (start, duration) of each uncovered stretch
        self.errors = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)

    # -- tracking
    def track(self, worker: WorkerProcess) -> None:
        with self._lock:
            self.workers.append(worker)

    def forget(self, worker: WorkerProcess) -> None:
        """``worker`` no longer counts as live, from now on (call it before killing it: while
        another thread waits for a process, ``Popen.poll`` still says it runs)."""
        with self._lock:
            self.gone.add(worker.pid)

    def live(self) -> list[WorkerProcess]:
        with self._lock:
            return [w for w in self.workers if w.pid not in self.gone and w.alive()]

    def start(self) -> Membership:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with self._lock:
            if self.uncovered_since is not None:  # still open at the end: count it as it stands
                self.uncovered.append((self.uncovered_since, time.monotonic() - self.uncovered_since))
                self.uncovered_since = None
        self.client.close()

    def arm(self) -> None:
        """Start counting uncovered stretches (before the first settle every partition is free)."""
        with self._lock:
            self.armed_at = time.monotonic()

    # -- sampling
    def _beats(self) -> dict[int, dict[str, Any]]:
        keys = list(self.client.scan_iter(match=self.settings.key("workers", "*"), count=500))
        beats: dict[int, dict[str, Any]] = {}
        for raw in self.client.mget(keys) if keys else []:
            if raw:
                beat = json.loads(raw)
                pid = int(beat.get("pid", -1))
                if pid not in beats or beat.get("at", 0) > beats[pid].get("at", 0):
                    beats[pid] = beat
        return beats

    def sample(self) -> Sample:
        # The sample's time is taken before anything is looked at, so a change made after it
        # (a kill, a spawn) is never credited to it: a sample at or after a change saw the change.
        now = time.monotonic()
        live = self.live()
        beats = self._beats()
        held: dict[int, list[int]] = {}
        for w in live:
            beat = beats.get(w.pid)
            if beat is not None:
                self.first_beat.setdefault(w.pid, now)
                held[w.pid] = sorted(beat.get("partitions") or [])
            else:
                held[w.pid] = []
        every = set(range(self.settings.partitions))
        union = {p for parts in held.values() for p in parts}
        total = sum(len(parts) for parts in held.values())
        covered = union == every
        settled = bool(live) and covered and total == len(every) and all(held.values())
        s = Sample(now, covered, settled, held)
        with self._lock:
            self.samples.append(s)
            if self.armed_at is not None:
                if not covered and self.uncovered_since is None:
                    self.uncovered_since = now
                elif covered and self.uncovered_since is not None:
                    self.uncovered.append((self.uncovered_since, now - self.uncovered_since))
                    self.uncovered_since = None
            self._lock.notify_all()
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a missed sample is not a failure; counted
                self.errors += 1
            self._stop.wait(self.interval)

    # -- waiting
    def _first(self, after: float, what: str) -> float | None:
        for s in self.samples:
            if s.t >= after and getattr(s, what):
                return s.t
        return None

    def first(self, after: float, what: str) -> float | None:
        """Time of the first sample at or after ``after`` whose ``what`` ("covered"/"settled") held."""
        with self._lock:
            return self._first(after, what)

    def wait_settled(self, after: float, timeout: float = SETTLE_TIMEOUT) -> float:
        """Wait for a settled sample taken at or after ``after``; return its time."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                hit = self._first(after, "settled")
                if hit is not None:
                    return hit
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self.samples[-1] if self.samples else None
                    raise AssertionError(
                        f"the group did not settle within {timeout:.0f} s of the change: {self.diagnose(last)}; "
                        f"last sample: {last}\n" + "\n".join(w.log_tail(30) for w in self.workers[-6:]))
                self._lock.wait(min(left, 1.0))

    def diagnose(self, s: Sample | None) -> str:
        """Why ``s`` is not settled, in words."""
        if s is None:
            return "no heartbeat sample at all"
        n = self.settings.partitions
        held = [p for parts in s.held.values() for p in parts]
        shared = sorted({p for p in held if held.count(p) > 1})
        missing = sorted(set(range(n)) - set(held))
        idle = [pid for pid, parts in s.held.items() if not parts]
        why = []
        if shared:
            why.append(f"partitions {shared} held by several live workers at once (each heartbeat lists the "
                       f"partition numbers of its input-topic assignment)")
        if missing:
            why.append(f"partitions {missing} held by no live worker")
        if idle:
            why.append(f"live workers {idle} hold no partition (or wrote no heartbeat)")
        return "; ".join(why) or "settled"

    @property
    def longest_uncovered(self) -> float:
        with self._lock:
            open_now = [time.monotonic() - self.uncovered_since] if self.uncovered_since is not None else []
            return max([d for _, d in self.uncovered] + open_now, default=0.0)


# --------------------------------------------------------------------------- the run
@dataclass
class ChaosResult:
    predictions: int = 0
    labeled: int = 0
    messages: int = 0
    outcome_messages: int = 0
    outcomes_distinct: int = 0
    duplicates: int = 0
    duplicates_not_identical: int = 0
    dead_letters: int = 0
    kills: int = 0
    scale_events: int = 0
    workers_started: int = 0
    longest_uncovered_s: float = 0.0
    longest_settle_s: float = 0.0
    longest_rebalance_s: float = 0.0
    outcomes_exact: bool = False
    metrics_exact: bool = False
    elapsed_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    problems: str = ""
    pids: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The one-line JSON summary of the benchmark."""
        return {"predictions": self.predictions, "labeled": self.labeled,
                "outcomes_distinct": self.outcomes_distinct, "duplicates": self.duplicates,
                "kills": self.kills, "scale_events": self.scale_events,
                "longest_rebalance_s": round(self.longest_rebalance_s, 2),
                "metrics_exact": self.metrics_exact, "elapsed_s": round(self.elapsed_s, 1)}

    def table(self) -> str:
        lines = [(f"{'change':<7} {'pid':>7} {'new pid':>7} {'exit':>5} {'stop s':>6} {'start s':>7} "
                  f"{'covered s':>9} {'settled s':>9}")]
        for c in self.changes:
            def f(x: float | None) -> str:
                return "-" if x is None else f"{x:.1f}"
            lines.append(f"{c.kind:<7} {c.pid:>7} {c.replacement or '-':>7} {c.exit_code if c.exit_code is not None else '-':>5} "
                         f"{f(c.stop_s):>6} {f(c.startup_s):>7} {f(c.covered_s):>9} {f(c.settled_s):>9}")
        return "\n".join(lines)


def kill(worker: WorkerProcess) -> int | None:
    """SIGKILL to the worker's process group (its pid: ``processes.spawn`` starts a session);
    its exit code."""
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return worker.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def check_duplicates(records: list[Any], problems: Problems) -> tuple[int, int, int]:
    """(distinct (id, revision), republished copies, copies that differ from the first) of ``outcomes``.

    A copy must repeat the first publication byte for byte (key and value)."""
    first: dict[tuple[bytes, int], bytes] = {}
    copies = differing = 0
    for rec in records:
        revision = json.loads(rec.value)["revision"]
        ident = (rec.key, revision)
        if ident not in first:
            first[ident] = rec.value
            continue
        copies += 1
        if rec.value != first[ident]:
            differing += 1
            problems.add("republished outcome not byte-identical to the first publication",
                         f"{rec.key!r} revision {revision}: {first[ident]!r} / {rec.value!r}")
    return len(first), copies, differing


def run_chaos(settings: Settings, start_worker: Callable[[], WorkerProcess], web: Any, *,
              n_predictions: int, seed: int, kills: int = 5, scale_cycles: int = 2, core: int = 3,
              pause: float = 2.0, say: Callable[[str], None] = print,
              consume_timeout: float = 300.0, res: ChaosResult | None = None) -> ChaosResult:
    """Run the chaos scenario (module doc) and check every output; never raises for a wrong
    output (see ``ChaosResult.problems``), raises :class:`AssertionError` for a stuck run.

    ``start_worker()`` spawns one worker process for ``settings`` without waiting for it;
    ``web`` serves the HTTP API for ``settings`` (``get_json``). ``res``: the result to fill in
    (what was measured is in it when the run raises).
    """
    t0 = time.monotonic()
    res = ChaosResult() if res is None else res
    rng = random.Random(seed)
    stream = generate(seed=seed, n_predictions=n_predictions, max_event_bytes=settings.max_event_bytes,
                      order_sensitive=False)
    ref = reference.build(stream.messages)
    messages = stream.messages
    res.predictions, res.labeled, res.messages = len(ref.predictions), len(ref.outcomes), len(messages)
    res.timings["generate"] = time.monotonic() - t0
    say(f"chaos: {res.predictions:,} predictions ({res.labeled:,} labeled, {len(ref.unlabeled):,} never), "
        f"{len(messages):,} messages, seed {seed}")

    schedule = ["kill"] * kills + ["add", "remove"] * scale_cycles
    n_chunks = len(schedule) + 1
    bounds = [round(i * len(messages) / n_chunks) for i in range(n_chunks + 1)]
    chunks = [messages[bounds[i]:bounds[i + 1]] for i in range(n_chunks)]
    metas: list[Any] = []
    stop_problems: list[str] = []

    membership = Membership(settings).start()

    def spawn() -> WorkerProcess:
        w = start_worker()
        res.pids.append(w.pid)
        membership.track(w)
        return w

    def startup_of(w: WorkerProcess, spawned: float) -> float | None:
        beat = membership.first_beat.get(w.pid)
        return None if beat is None else beat - spawned

    try:
        t = time.monotonic()
        workers = [spawn() for _ in range(core)]
        initial = Change("start", workers[0].pid, t)
        res.changes.append(initial)
        for w in workers:
            w.wait_ready(120)
        metas += produce(settings, chunks[0])
        settled = membership.wait_settled(t)
        initial.settled_s = settled - t
        initial.covered_s = (membership.first(t, "covered") or settled) - t
        initial.startup_s = max((membership.first_beat.get(w.pid, settled) for w in workers), default=t) - t
        membership.arm()
        res.timings["start"] = time.monotonic() - t
        say(f"chaos: {core} workers {[w.pid for w in workers]} settled after {settled - t:.1f} s; "
            f"chunk 1/{n_chunks} produced ({len(chunks[0]):,} messages)")

        extra: WorkerProcess | None = None
        t = time.monotonic()
        for i, action in enumerate(schedule, start=1):
            # Chunk i goes out around change i: its first part just before (the workers are busy
            # with it when the change comes), the rest right after (while the group rebalances).
            cut = rng.randint(len(chunks[i]) // 3, 2 * len(chunks[i]) // 3)
            metas += produce(settings, chunks[i][:cut])
            time.sleep(rng.uniform(0.0, 0.3))
            at = time.monotonic()
            if action == "kill":
                victim = rng.choice(workers)
                membership.forget(victim)
                code = kill(victim)
                change = Change("kill", victim.pid, at, exit_code=code)
                metas += produce(settings, chunks[i][cut:])
                time.sleep(max(0.0, pause - (time.monotonic() - at)))
                spawned = time.monotonic()
                new = spawn()
                workers[workers.index(victim)] = new
                change.replacement = new.pid
            elif action == "add":
                spawned = at
                extra = spawn()
                # From now on every sample counts the new worker (a sample started earlier may
                # not, and would still show the old group settled).
                at = time.monotonic()
                change = Change("add", extra.pid, at)
                metas += produce(settings, chunks[i][cut:])
            else:
                assert extra is not None
                removed = extra
                code = removed.stop()  # SIGTERM, SIGKILL after shutdown_timeout_seconds
                membership.forget(removed)
                change = Change("remove", removed.pid, at, exit_code=code, stop_s=time.monotonic() - at)
                extra = None
                metas += produce(settings, chunks[i][cut:])
            res.changes.append(change)
            # A removed worker holds its partitions until it exits: only a sample taken after
            # that shows the group without it.
            after = at + change.stop_s if change.stop_s is not None else at
            done = membership.wait_settled(after)
            change.settled_s = done - at
            covered = membership.first(after, "covered")
            change.covered_s = None if covered is None else covered - at
            if action in ("kill", "add"):
                change.startup_s = startup_of(new if action == "kill" else extra, spawned)
            for w in membership.live():
                w.check_alive()
            say(f"chaos: {i}/{len(schedule)} {action} pid {change.pid}"
                + (f" -> {change.replacement}" if change.replacement else "")
                + (f" (exit {change.exit_code}" + (f", stopped in {change.stop_s:.1f} s" if change.stop_s else "") + ")"
                   if change.exit_code is not None else "")
                + f": settled after {change.settled_s:.1f} s; chunk {i + 1}/{n_chunks} produced around it")
            if action == "remove" and change.exit_code != 0:
                stop_problems.append(f"worker {change.pid}: exit code {change.exit_code} after "
                                     f"{change.stop_s:.1f} s\n{removed.log_tail(30)}")
        res.timings["chaos"] = time.monotonic() - t
    finally:
        membership.stop()
        res.longest_uncovered_s = membership.longest_uncovered
        # A change that never settled (the run raised) counts with the time waited for it.
        res.longest_settle_s = max((time.monotonic() - c.at if c.settled_s is None else c.settled_s
                                    for c in res.changes), default=0.0)
        res.longest_rebalance_s = max(res.longest_uncovered_s, res.longest_settle_s)
        res.workers_started = len(res.pids)
        res.kills = sum(c.kind == "kill" for c in res.changes)  # done, not planned
        res.scale_events = sum(c.kind in ("add", "remove") for c in res.changes)
        res.elapsed_s = time.monotonic() - t0
    live = [w for w in membership.workers if w.alive()]
    say(f"chaos: changes done; longest uncovered stretch {res.longest_uncovered_s:.1f} s, longest settle "
        f"{res.longest_settle_s:.1f} s; {len(live)} workers up; {membership.errors} failed samples")

    drain_and_check(settings, live, web, messages, metas, ref, res, consume_timeout=consume_timeout,
                    problems=[("a removed worker did not stop gracefully (SIGTERM, exit code 0)", d)
                              for d in stop_problems])
    res.elapsed_s = time.monotonic() - t0
    return res


def drain_and_check(settings: Settings, live: list[WorkerProcess], web: Any, messages: list[Msg],
                    metas: list[Any], ref: reference.Reference, res: ChaosResult, *,
                    consume_timeout: float = 300.0, problems: list[tuple[str, str]] = ()) -> None:
    """Wait until ``live`` workers committed every message of ``metas``, send the sentinels, read
    the outputs until quiet, then check them against ``ref`` into ``res`` (``problems``: more
    failures, by category, to report with the others).

    ``res.metrics_exact``: ``GET /api/models`` equals the reference. ``res.outcomes_exact``: the
    outcomes (revisions 1..k, final ones, byte-identical republications, the metrics they imply)
    and the dead letters are right.
    """
    outcome_records, letters, api, seen_totals, expected_totals = drain_and_read(
        settings, live, web, metas, ref, res.timings, consume_timeout=consume_timeout, drain_timeout=120,
        quiet_seconds=3.0, api_timeout=60)
    res.timings["drain_and_read"] = res.timings.pop("sentinels_and_read")

    t = time.monotonic()
    outcome_problems, metric_problems = Problems(), Problems()
    if seen_totals != expected_totals:
        metric_problems.add("/api/models totals (whole versions, cumulative)",
                            f"got {seen_totals}, expected {expected_totals}")
    finals = final_outcomes(outcome_records, outcome_problems, allow_redelivery=True)
    check_outcomes(ref, finals, outcome_problems)
    res.outcomes_distinct, res.duplicates, res.duplicates_not_identical = check_duplicates(
        outcome_records, outcome_problems)
    res.outcome_messages, res.dead_letters = len(outcome_records), len(letters)
    check_dead_letters(settings, messages, metas, letters, outcome_problems, allow_redelivery=True)
    window = settings.rolling_window
    check_snapshots(api, reference.metrics(ref.predictions, ref.outcomes, len(ref.orphans), window,
                                           skip_models=[SENTINEL]), metric_problems, "reference")
    # The metrics the outcomes topic implies (its last revision per id): a consumer of the topic
    # would compute these; they differ from the API's when the topic's revisions are wrong.
    check_snapshots(api, observed_metrics(ref, finals, window), outcome_problems, "published outcomes")
    res.outcomes_exact, res.metrics_exact = not outcome_problems, not metric_problems
    res.timings["checks"] = time.monotonic() - t
    everything = Problems()
    for category, detail in problems:
        everything.add(category, detail)
    for group in (outcome_problems, metric_problems):
        for category, details in group.items.items():
            everything.items[category].extend(details)
    res.problems = everything.report() if everything else ""


def describe(res: ChaosResult) -> str:
    """Every number of a run, for the test's output and the benchmark's progress lines."""
    d = {k: v for k, v in asdict(res).items() if k not in ("changes", "problems", "pids", "timings")}
    return (json.dumps(d) + f"\ntimings: { {k: round(v, 1) for k, v in res.timings.items()} }\n"
            + res.table())
