"""Chaos at scale: workers killed, added and removed while 100,000 predictions are replayed.

The scenario of ``tests/integration/scale/test_workers_chaos.py`` (described in
``tests/integration/scale/chaos_run.py``), at a larger size and on servers of its own: an embedded
broker (Tansu) and an embedded Redis in a temporary directory, three worker processes sharing the
8 partitions, the HTTP API served in this process. While a seeded stream of predictions with
labels (before, after, twice, disagreeing, never) is produced in chunks, a random worker is
killed with SIGKILL ``--kills`` times (a new one starts after a short pause), then a fourth worker
is added and removed with SIGTERM ``--scale-cycles`` times. Then every outcome, dead letter and
metric is checked against the offline reference of ``tests/integration/streams/e2e_reference.py``.

Prints progress lines, the table of membership changes, and ends with one JSON line::

    {"predictions": ..., "labeled": ..., "outcomes_distinct": ..., "duplicates": ..., "kills": 5,
     "scale_events": 4, "longest_rebalance_s": ..., "metrics_exact": true, "elapsed_s": ...,
     "outcomes_exact": true, "longest_uncovered_s": ..., "workers_started": 10, "error": null}

``duplicates`` counts outcomes published again with the same (prediction id, revision) (allowed
after a kill only as byte-identical copies); ``longest_rebalance_s`` is the larger of the longest
stretch with an input partition held by no live worker and the longest time from a membership
change until every live worker held partitions, none twice, all of them (from the heartbeats
in Redis). Exits 1 when anything is not exact (outcomes, dead letters, metrics), when a rebalance
took 60 s or more, when a removed worker did not stop gracefully or when a worker process
survived the run::

    .venv/bin/python benchmarks/chaos.py [--predictions 100000] [--seed 6] [--kills 5]
                                         [--scale-cycles 2] [--keep]

The helpers come from the integration tests (``tests/integration/streams`` and
``tests/integration/scale`` are put on ``sys.path``), so the benchmark and the test check the
same things the same way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _dir in (ROOT, ROOT / "tests", ROOT / "tests" / "integration" / "streams", ROOT / "tests" / "integration" / "scale"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

REBALANCE_LIMIT_S = 60.0


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def running(psutil: object, pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # type: ignore[attr-defined]
    except psutil.NoSuchProcess:  # type: ignore[attr-defined]
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--predictions", type=int, default=100_000, help="predictions in the stream")
    parser.add_argument("--seed", type=int, default=6, help="seed of the stream and of the chaos")
    parser.add_argument("--kills", type=int, default=5, help="workers killed with SIGKILL (each replaced)")
    parser.add_argument("--scale-cycles", type=int, default=2, help="times a 4th worker is added and removed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args(argv)

    import psutil
    from chaos_run import CHAOS_SETTINGS, ChaosResult, describe, run_chaos
    from e2e_worker import WebServer, WorkerProcess, create_topics, unique_settings

    from feedback_loop.runtime.embedded import EmbeddedServers

    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="chaos-bench-"))
    servers = EmbeddedServers(data_dir=tmp / "servers")
    started: list[WorkerProcess] = []
    web = None
    res = ChaosResult()
    error: str | None = None
    survivors: list[int] = []
    try:
        servers.start()
        say(f"embedded servers: kafka {servers.bootstrap}, redis {servers.redis_url}; logs in {tmp}")
        settings = unique_settings(servers.bootstrap, servers.redis_url, tmp / "data", **CHAOS_SETTINGS)
        create_topics(settings)
        web = WebServer(settings).start()

        def start_worker() -> WorkerProcess:
            worker = WorkerProcess(settings, tmp / "logs" / f"worker-{len(started)}.log")
            started.append(worker)
            return worker.start()

        try:
            run_chaos(settings, start_worker, web, n_predictions=args.predictions, seed=args.seed,
                      kills=args.kills, scale_cycles=args.scale_cycles, say=say, consume_timeout=900.0,
                      res=res)
        except AssertionError as exc:  # a stuck run: what was measured is in res
            error = str(exc)
            say(f"the run did not complete: {error[:3000]}")
    finally:
        for worker in reversed(started):
            code = worker.stop()
            if code not in (0, -9) and worker.proc is not None:
                say(f"worker pid {worker.pid} ended with code {code}")
        deadline = time.monotonic() + 10
        while True:
            survivors = [w.pid for w in started if running(psutil, w.pid)]
            if not survivors or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if web is not None:
            web.stop()
        servers.stop()
        if not args.keep and error is None and not res.problems:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"logs kept in {tmp}")

    res.elapsed_s = time.monotonic() - t0
    print(describe(res), flush=True)
    if res.problems:
        print(res.problems, flush=True)
    if survivors:
        say(f"worker processes survived the run: {survivors}")
    ok = (error is None and not res.problems and res.outcomes_exact and res.metrics_exact
          and res.duplicates_not_identical == 0 and res.longest_rebalance_s < REBALANCE_LIMIT_S
          and not survivors)
    summary = {**res.summary(), "outcomes_exact": res.outcomes_exact,
               "longest_uncovered_s": round(res.longest_uncovered_s, 2), "workers_started": res.workers_started,
               "error": None if error is None else error.splitlines()[0][:300]}
    print(json.dumps(summary), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
