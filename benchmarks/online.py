"""Online learning on Elec2: the frozen model, River's online models, and the pipeline's champion.

Elec2 from row 5,000 on (40,312 rows), labels ``--label-delay`` rows (48, one day) late:

* ``frozen``: River's ``StandardScaler | LogisticRegression`` trained on the first 5,000 rows;
* ``online_lr``, ``online_arf``: the same challenger specs the pipeline uses (``logreg``: scaled
  one-vs-rest logistic regression; ``arf``: ARF with 10 trees, seed 42), trained on the first
  5,000 rows, then predicting each row when it arrives and learning it when its label does
  (River's delayed test-then-train loop);
* ``champion``: the pipeline. The worker's own monitor-partition code (drift monitors, the review
  router, the learners with their champion / challenger decisions) is fed the observations the
  join publishes, in stream order, from row 0 (rows before 5,000 warm the learners and are not
  scored). The producer starts with the frozen model and serves the champion the pipeline
  announces (as a ``ModelHandle`` following every update would); a 5% review budget routes
  predictions to simulated reviewers, who answer at once with the true class, so those labels
  arrive early. The champion's accuracy is that of the predictions the producer served.

    .venv/bin/python benchmarks/online.py [--label-delay 48] [--budget 0.05] [--pretrain 5000]

The last line is one JSON object with ``frozen``, ``online_lr``, ``online_arf``, ``champion``
(accuracies in 0..1), the promotions and the reviews. About 3 minutes.
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import orjson
from river import linear_model, preprocessing

from feedback_loop import elec2
from feedback_loop.routing.router import RoutingConfig
from feedback_loop.settings import Settings
from online_models.learner import learner_configs
from online_models.specs import BUILTIN, build
from streams.monitor import MonitorConfig
from streams.monitor_state import MonitorPartition
from streams.observations import outcome_observation, prediction_observation
from streams.partition import Record

MODEL = "elec2"


def river_delayed(spec_name: str, data: list, pretrain: int, delay: int) -> float:
    """River's loop: pretrain, then predict each row and learn it ``delay`` rows later."""
    model = build(BUILTIN[spec_name])
    for x, y in data[:pretrain]:
        model.learn_one(x, y)
    waiting: deque = deque()
    correct = 0
    for x, y in data[pretrain:]:
        correct += model.predict_one(x) == y
        waiting.append((x, y))
        if len(waiting) > delay:
            model.learn_one(*waiting.popleft())
    return correct / (len(data) - pretrain)


class Pipeline:
    """The monitor partition fed like the worker feeds it, with a producer and reviewers around it."""

    def __init__(self, settings: Settings) -> None:
        self.part = MonitorPartition(0, MonitorConfig.from_settings(settings), "bench",
                                     RoutingConfig.from_settings(settings), learning=learner_configs(settings))
        self.offset = 0
        self.updates: list[dict] = []

    def feed(self, key: bytes, value: bytes) -> list:
        out = self.part.apply_all([Record("monitor-input", 0, self.offset, key, value)], time.time())
        self.offset += 1
        for emit in out:
            if emit.kind == "model-updates":
                update = orjson.loads(emit.value)
                if update["action"] in ("promote", "rollback"):
                    self.updates.append(update)
        self.part.registry_saves.clear()
        self.part.champion_changes.clear()
        return out

    def serve(self, x: dict, frozen_p_up: float) -> tuple[str, dict]:
        """What the producer serves: the frozen model, or the champion once one is promoted."""
        learner = self.part.learners.get(MODEL)
        champ = None if learner is None or learner.champion is None else learner.champion.name
        if champ is None:
            return ("UP" if frozen_p_up >= 0.5 else "DOWN"), {"UP": frozen_p_up, "DOWN": 1 - frozen_p_up}
        proba = learner.challengers[champ].predict_proba_one(x)
        y = max(proba, key=proba.get) if proba else learner.challengers[champ].predict_one(x)
        return str(y), {str(k): float(v) for k, v in proba.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label-delay", type=int, default=48, help="rows between a prediction and its label")
    ap.add_argument("--budget", type=float, default=0.05, help="share of predictions reviewers answer at once")
    ap.add_argument("--pretrain", type=int, default=5000, help="rows before scoring starts")
    defaults = Settings()
    ap.add_argument("--window", type=int, default=defaults.promotion_window, help="promotion window (outcomes)")
    ap.add_argument("--min-margin", type=float, default=defaults.promotion_min_margin, help="promotion margin")
    ap.add_argument("--skip-river", action="store_true", help="skip River's reference loops")
    ap.add_argument("--challengers", nargs="+", default=["logreg", "arf"], help="challenger specs")
    ap.add_argument("--policies", nargs="+", default=defaults.review_policies, help="review routing policies")
    args = ap.parse_args()
    data = list(elec2.rows())
    n = len(data) - args.pretrain
    frozen = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in data[:args.pretrain]:
        frozen.learn_one(x, y == "UP")
    frozen_p = [float(frozen.predict_proba_one(x).get(True, 0.0)) for x, _ in data]
    frozen_acc = sum((p >= 0.5) == (y == "UP") for p, (_, y) in zip(frozen_p[args.pretrain:], data[args.pretrain:])) / n
    print(f"Elec2 rows {args.pretrain:,}-{len(data) - 1:,} ({n:,}), labels {args.label_delay} rows late")
    print(f"frozen logistic regression      {frozen_acc:.4f}")
    online_lr = online_arf = float("nan")
    if not args.skip_river:
        started = time.perf_counter()
        online_lr = river_delayed("logreg", data, args.pretrain, args.label_delay)
        print(f"online logistic regression      {online_lr:.4f}   (River, {time.perf_counter() - started:.0f} s)")
        started = time.perf_counter()
        online_arf = river_delayed("arf", data, args.pretrain, args.label_delay)
        print(f"online ARF(10)                  {online_arf:.4f}   (River, {time.perf_counter() - started:.0f} s)")

    settings = Settings(online_models={MODEL: args.challengers}, review_budget_per_hour=2.0 * args.budget,
                        promotion_window=args.window, promotion_min_margin=args.min_margin,
                        review_policies=args.policies)
    pipe = Pipeline(settings)
    started = time.perf_counter()
    waiting: deque = deque()
    reviewed: set[int] = set()
    served_ok = 0
    caught = 0
    for i, (x, y) in enumerate(data):
        t = elec2.timestamp(i).timestamp()
        pid = f"p-{i}"
        prediction, scores = pipe.serve(x, frozen_p[i])
        learner = pipe.part.learners.get(MODEL)
        version = "frozen-5000" if learner is None or learner.champion is None else learner.champion.version
        if i >= args.pretrain:
            served_ok += prediction == y
        conf = max(scores.values()) if scores else None
        out = pipe.feed(*prediction_observation(pid, MODEL, version, t, x, prediction, conf, scores))
        if any(e.kind == "review-queue" for e in out):  # a reviewer answers at once
            reviewed.add(i)
            caught += prediction != y
            pipe.feed(*outcome_observation(pid, MODEL, version, t, t, prediction == y, conf, 1, y, "review", x,
                                           prediction, scores, first_label=True))
        waiting.append((i, pid, version, t, x, y, prediction, conf, scores))
        if len(waiting) > args.label_delay:
            j, pj, vj, tj, xj, yj, predj, confj, scoresj = waiting.popleft()
            first = j not in reviewed
            pipe.feed(*outcome_observation(pj, MODEL, vj, tj, t, predj == yj, confj, 1 if first else 2, yj,
                                           "label", xj, predj, scoresj, first_label=first))
        if i and i % 5000 == 0:
            print(f"  row {i:,}: served accuracy so far "
                  f"{served_ok / max(1, i - args.pretrain + 1):.4f}, reviewed {len(reviewed):,}, "
                  f"decisions {len(pipe.updates)} ({time.perf_counter() - started:.0f} s)", flush=True)
    champion = served_ok / n
    report = pipe.part.learners[MODEL].report()
    print(f"pipeline champion (served)      {champion:.4f}   ({time.perf_counter() - started:.0f} s, "
          f"{len(reviewed):,} reviewed, {caught:,} of them errors)")
    for update in pipe.updates:
        ev = update["evidence"]
        print(f"  {update['action']:8s} {update['previous_version']} -> {update['version']} at {update['at'][:16]}: "
              f"{ev.get('test', ev.get('by'))}, p={ev.get('p_value', float('nan')):.2g}, " + (
                  f"champion {ev['champion_accuracy']:.3f} vs challenger {ev['challenger_accuracy']:.3f}"
                  if update["action"] == "promote" else
                  f"{ev['accuracy']:.3f} since promotion vs {ev['previous_accuracy']:.3f} before"))
    for name, c in report["challengers"].items():
        print(f"  challenger {name}: prequential {c['prequential_accuracy']:.4f}, shadow {c['shadow_accuracy']:.4f} "
              f"over {c['shadow_n']:,} outcomes, {c['updates']:,} updates")
    print(orjson.dumps({
        "frozen": round(frozen_acc, 5), "online_lr": round(online_lr, 5), "online_arf": round(online_arf, 5),
        "champion": round(champion, 5), "target": 0.8, "rows": n, "label_delay": args.label_delay,
        "budget": args.budget, "reviewed": len(reviewed), "reviewed_errors": caught,
        "promotions": [{"action": u["action"], "version": u["version"], "previous": u["previous_version"],
                        "at": u["at"]} for u in pipe.updates],
    }).decode())


if __name__ == "__main__":
    main()
