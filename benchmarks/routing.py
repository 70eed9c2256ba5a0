"""Review routing on Elec2: the share of a frozen model's errors each policy sends to reviewers.

A River pipeline ``StandardScaler | LogisticRegression`` learns the first 5,000 rows of Elec2 and
is frozen; it predicts the remaining 40,312 rows (two per hour of event time). Ground-truth labels
arrive ``--label-delay`` rows (48, one day) late. The review budget is ``--budget`` (5%) of the
predictions, i.e. ``0.05 * 2 = 0.1`` items per hour, the gate of
:class:`feedback_loop.routing.router.Router` spends it.

Each policy runs alone, then the default set (``learned``, ``label_error``, ``drift``,
``disagreement``: only the first scores here, there being no drift alert or challenger) and all
five scoring policies together (highest score wins). Each runs through the same :class:`~feedback_loop.routing.router.Router` code the
workers run (one router per model version, fed the ``monitor-input`` observations the join
publishes): a routed item is answered by a simulated reviewer at once with the true class, which
becomes an outcome observation of source ``review`` (so the learned policies learn from reviews,
as in the live loop), and the ground-truth label follows ``--label-delay`` rows later. Random
sampling admits a uniform random priority through the same budget gate. An item caught is a routed
prediction that was wrong; capture is caught / all errors; the ratio is capture / random capture.

    .venv/bin/python benchmarks/routing.py [--budget 0.05] [--label-delay 48] [--pretrain 5000]

The last line is one JSON object with ``random_capture``, ``least_confidence_ratio``,
``best_policy``, ``best_ratio`` and every policy's ratio and routed share. About 15 s.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque
from dataclasses import dataclass

import orjson
from river import linear_model, preprocessing

from feedback_loop import elec2
from feedback_loop.routing.gate import BudgetGate
from feedback_loop.routing.router import DEFAULT_POLICIES, Router, RoutingConfig

POLICIES = ("least_confidence", "margin", "entropy", "learned", "shadow")
ROWS_PER_HOUR = 2.0


@dataclass
class Row:
    index: int
    x: dict[str, float]
    y: str
    prediction: str
    p_up: float


@dataclass
class Result:
    name: str
    routed: int
    caught: int
    errors: int
    rows: int
    seconds: float

    @property
    def capture(self) -> float:
        return self.caught / self.errors

    @property
    def share(self) -> float:
        return self.routed / self.rows


def frozen_predictions(pretrain: int) -> list[Row]:
    data = list(elec2.rows())
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in data[:pretrain]:
        model.learn_one(x, y == "UP")
    rows = []
    for i in range(pretrain, len(data)):
        x, y = data[i]
        p_up = float(model.predict_proba_one(x).get(True, 0.0))
        rows.append(Row(i, x, y, "UP" if p_up >= 0.5 else "DOWN", p_up))
    return rows


def _t(row: Row) -> float:
    return elec2.timestamp(row.index).timestamp()


def prediction_obs(row: Row) -> dict:
    conf = max(row.p_up, 1.0 - row.p_up)
    return {"k": "p", "m": "elec2", "v": "frozen", "id": f"p-{row.index}", "t": _t(row), "x": row.x,
            "y": row.prediction, "c": conf, "s": {"UP": row.p_up, "DOWN": 1.0 - row.p_up}}


def outcome_obs(row: Row, source: str, revision: int, first: bool) -> dict:
    obs = prediction_obs(row)
    return {**obs, "k": "o", "pt": obs["t"], "ok": row.prediction == row.y, "r": revision,
            "l": row.y, "src": source, "lf": first}


def run_policy(policies: tuple[str, ...], rows: list[Row], budget_per_hour: float, delay: int) -> Result:
    config = RoutingConfig(policies=policies, budget_per_hour=budget_per_hour)
    router = Router("elec2", "frozen", config)
    started = time.perf_counter()
    routed = caught = 0
    reviewed: set[int] = set()
    waiting: deque[Row] = deque()
    for row in rows:
        if router.on_prediction(prediction_obs(row)):
            routed += 1
            caught += row.prediction != row.y
            reviewed.add(row.index)
            router.on_outcome(outcome_obs(row, "review", 1, True))
        waiting.append(row)
        if len(waiting) > delay:
            done = waiting.popleft()
            first = done.index not in reviewed
            router.on_outcome(outcome_obs(done, "label", 1 if first else 2, first))
    errors = sum(r.prediction != r.y for r in rows)
    return Result("+".join(policies), routed, caught, errors, len(rows), time.perf_counter() - started)


def run_random(rows: list[Row], budget_per_hour: float, seed: int) -> Result:
    gate, rng = BudgetGate(budget_per_hour, burst=RoutingConfig().burst), random.Random(seed)
    started = time.perf_counter()
    routed = caught = 0
    for row in rows:
        if gate.admit(rng.random(), _t(row)):
            routed += 1
            caught += row.prediction != row.y
    errors = sum(r.prediction != r.y for r in rows)
    return Result("random", routed, caught, errors, len(rows), time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=0.05, help="share of predictions reviewers can answer")
    ap.add_argument("--label-delay", type=int, default=48, help="rows between a prediction and its label")
    ap.add_argument("--pretrain", type=int, default=5000, help="rows the model learns before it is frozen")
    ap.add_argument("--seeds", type=int, default=5, help="random-sampling runs averaged")
    args = ap.parse_args()
    rows = frozen_predictions(args.pretrain)
    errors = sum(r.prediction != r.y for r in rows)
    budget_per_hour = args.budget * ROWS_PER_HOUR
    print(f"Elec2, frozen logistic regression after {args.pretrain:,} rows: {len(rows):,} predictions, "
          f"{errors:,} errors ({errors / len(rows):.1%}); labels {args.label_delay} rows late; "
          f"budget {args.budget:.0%} = {budget_per_hour:g} items per hour")
    randoms = [run_random(rows, budget_per_hour, seed) for seed in range(args.seeds)]
    random_capture = sum(r.capture for r in randoms) / len(randoms)
    random_share = sum(r.share for r in randoms) / len(randoms)
    print(f"{'policy':34s} {'routed':>7s} {'share':>7s} {'caught':>7s} {'capture':>8s} {'ratio':>6s}  seconds")
    print(f"{'random (mean of %d seeds)' % args.seeds:34s} {randoms[0].routed:7d} {random_share:7.2%} "
          f"{randoms[0].caught:7d} {random_capture:8.2%} {1.0:6.2f}")
    results = {}
    for policies in [(p,) for p in POLICIES] + [DEFAULT_POLICIES, POLICIES]:
        result = run_policy(policies, rows, budget_per_hour, args.label_delay)
        name = {DEFAULT_POLICIES: "default", POLICIES: "all"}.get(policies, policies[0])
        results[name] = result
        print(f"{name:34s} {result.routed:7d} {result.share:7.2%} {result.caught:7d} {result.capture:8.2%} "
              f"{result.capture / random_capture:6.2f}  {result.seconds:7.1f}", flush=True)
    best = max(results, key=lambda k: results[k].capture)
    summary = {
        "random_capture": round(random_capture, 5),
        "random_share": round(random_share, 5),
        "least_confidence_ratio": round(results["least_confidence"].capture / random_capture, 3),
        "best_policy": best,
        "best_ratio": round(results[best].capture / random_capture, 3),
        **{f"{name}_ratio": round(r.capture / random_capture, 3) for name, r in results.items()
           if name in POLICIES},
        "default_ratio": round(results["default"].capture / random_capture, 3),
        "all_ratio": round(results["all"].capture / random_capture, 3),
        **{f"{name}_share": round(r.share, 5) for name, r in results.items() if name in POLICIES},
        "budget": args.budget, "label_delay": args.label_delay, "errors": errors, "predictions": len(rows),
    }
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
