"""The demo report's champion part: the live champion next to the frozen model and the
no-change baseline, over time and in total, with its promotions and rollbacks marked.

The frozen model's and the baseline's accuracies come from the demo's own record of every
prediction and true class; the champion's from its learner's report in Redis (``{ns}:learners``):
the accuracy of what it would have served (the producer's frozen model until a challenger is
promoted, then that challenger's prediction made when the prediction arrived), recorded every
250 outcomes, so period boundaries are exact to 250 outcomes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
import redis

from feedback_loop import elec2
from feedback_loop.kafka_security import redis_kwargs
from feedback_loop.settings import Settings

CHAMPION_MODEL = "elec2-logreg"


def learner_report(settings: Settings, model: str = CHAMPION_MODEL) -> dict[str, Any] | None:
    client = redis.Redis.from_url(settings.redis_url or "", **redis_kwargs(settings))
    try:
        raw = client.hget(settings.key("learners"), model)
    finally:
        client.close()
    return None if raw is None else orjson.loads(raw)


def champion_line(settings: Settings) -> str:
    report = learner_report(settings)
    if not report or report.get("served_accuracy") is None:
        return ""
    return f" | champion {report['champion']} served acc {report['served_accuracy']:.3f}"


def _accuracy(pairs: list[tuple[str, str]]) -> float | None:
    return sum(p == y for p, y in pairs) / len(pairs) if pairs else None


def _champion_between(history: list[list[float]], t0: float, t1: float) -> float | None:
    before = [h for h in history if h[0] < t0]
    upto = [h for h in history if h[0] < t1]
    n0, c0 = (before[-1][1], before[-1][2]) if before else (0, 0)
    if not upto or upto[-1][1] <= n0:
        return None
    return (upto[-1][2] - c0) / (upto[-1][1] - n0)


def champion_report(settings: Settings, plan: Any, label_delay: int, periods: int = 8) -> dict[str, Any]:
    """Per period and in total: frozen, no-change and champion accuracy; the decisions."""
    report = learner_report(settings) or {}
    history = report.get("history", [])
    decisions = report.get("updates", [])
    rows = sorted(int(pid.rsplit("-", 1)[1]) for pid in plan.truth if pid.startswith(CHAMPION_MODEL))
    if not rows:
        return {"text": "", "periods": []}
    size = -(-len(rows) // periods)
    table = []
    lines = [f"The live champion of elec2-logreg (online challengers: {', '.join(report.get('challengers', {}))}; "
             f"they start from nothing at row {rows[0]:,}) next to the frozen model and the no-change baseline:",
             f"  {'rows':>13s}  {'from':10s}  {'frozen':>7s}  {'no-change':>9s}  {'champion':>8s}  decisions"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for k in range(0, len(rows), size):
        chunk = rows[k:k + size]
        t0, t1 = elec2.timestamp(chunk[0]).timestamp(), elec2.timestamp(chunk[-1] + 1).timestamp()
        frozen = _accuracy([plan.truth[f"{CHAMPION_MODEL}-{i:06d}"] for i in chunk])
        baseline = _accuracy([plan.truth[f"elec2-no-change-{i:06d}"] for i in chunk])
        champ = _champion_between(history, t0, t1)
        marks = [f"{d['action']} {d['version']}" for d in decisions
                 if t0 <= datetime.fromisoformat(d["at"]).timestamp() < t1 + label_delay * 1800]
        table.append({"first_row": chunk[0], "last_row": chunk[-1], "frozen": frozen, "no_change": baseline,
                      "champion": champ, "decisions": marks})
        day = datetime.fromtimestamp(t0, timezone.utc).date().isoformat()
        lines.append(f"  {chunk[0]:>6,}-{chunk[-1]:<6,}  {day:10s}  {fmt(frozen):>7s}  {fmt(baseline):>9s}  "
                     f"{fmt(champ):>8s}  {', '.join(marks) if marks else ''}")
    total = {"frozen": _accuracy([plan.truth[f"{CHAMPION_MODEL}-{i:06d}"] for i in rows]),
             "no_change": _accuracy([plan.truth[f"elec2-no-change-{i:06d}"] for i in rows]),
             "champion": report.get("served_accuracy")}
    lines.append(f"  {'all':>13s}  {'':10s}  {fmt(total['frozen']):>7s}  {fmt(total['no_change']):>9s}  "
                 f"{fmt(total['champion']):>8s}  {len(decisions)} decisions, champion now {report.get('champion')}")
    return {"text": "\n".join(lines), "periods": table, "total": total, "decisions": decisions}
