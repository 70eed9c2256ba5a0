"""``feedback-loop demo``: Elec2 through the live loop, with delayed labels.

Two producer models predict the stream from row ``pretrain`` on:

* ``elec2-logreg``: River's scaled logistic regression trained on the first ``pretrain`` rows,
  then frozen (it emits class scores, so log loss and Brier are live too);
* ``elec2-no-change``: repeats the latest label it could know, the one published
  ``label_delay`` rows earlier.

Labels arrive ``label_delay`` rows (half-hours) after their prediction. The demo publishes, shows
progress with live accuracy read back from the loop, waits until every label has become an
outcome, prints the live metrics next to an offline computation of the same numbers, and writes
them to ``<data-dir>/demo-report.json``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson
import redis as redis_sync
from redis.asyncio import Redis
from river import linear_model, preprocessing

from feedback_loop import elec2
from feedback_loop.errors import FeedbackLoopError
from feedback_loop.events import LabelEvent, PredictionEvent
from feedback_loop.kafka_security import redis_kwargs
from feedback_loop.demo_report import champion_line, champion_report
from feedback_loop.lockstep import Lockstep, publish_days
from feedback_loop.replay import ReplayEvent
from feedback_loop.settings import Settings
from feedback_loop.simulated_reviewers import BackgroundWeb, SimulatedReviewers, review_text
from online_models.baselines import Frozen

WEEKDAYS = {1: "mon", 2: "tue", 3: "wed", 4: "thu", 5: "fri", 6: "sat", 7: "sun"}
Say = Callable[[str], None]


@dataclass
class DemoPlan:
    events: list[ReplayEvent]
    expected: dict[str, dict[str, float]]  # model -> offline count / correct / accuracy
    truth: dict[str, tuple[str, str]]  # prediction id -> (prediction, true class)


def build_events(pretrain: int = 5000, label_delay: int = 48, limit: int | None = None) -> DemoPlan:
    """Predictions and labels of both demo models, with the offline truth to compare with."""
    data = list(elec2.rows())[: limit]
    logreg = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in data[:pretrain]:
        logreg.learn_one(x, y == "UP")
    frozen = Frozen(logreg)
    events: list[ReplayEvent] = []
    truth: dict[str, tuple[str, str]] = {}
    tally = {m: [0, 0] for m in ("elec2-logreg", "elec2-no-change")}
    for i in range(pretrain, len(data)):
        x, y = data[i]
        ts = elec2.timestamp(i)
        tags = {"weekday": WEEKDAYS[int(x["day"])]}
        proba = frozen.predict_proba_one(x)
        p_up = float(proba.get(True, 0.0))
        known = data[i - label_delay - 1][1]
        for model, version, pred, scores in (
            ("elec2-logreg", f"frozen-{pretrain}", "UP" if p_up >= 0.5 else "DOWN",
             {"UP": p_up, "DOWN": 1.0 - p_up}),
            ("elec2-no-change", f"delay-{label_delay}", known, None),
        ):
            pid = f"{model}-{i:06d}"
            events.append(ReplayEvent(
                PredictionEvent(prediction_id=pid, model=model, model_version=version, timestamp=ts,
                                features=x, prediction=pred, scores=scores, tags=tags),
                LabelEvent(prediction_id=pid, label=y, timestamp=elec2.timestamp(i + label_delay),
                           source="elec2")))
            truth[pid] = (pred, y)
            tally[model][0] += 1
            tally[model][1] += pred == y
    expected = {m: {"count": n, "correct": c, "accuracy": c / n if n else 0.0}
                for m, (n, c) in tally.items()}
    return DemoPlan(events, expected, truth)


async def _snapshots(settings: Settings) -> list[dict[str, Any]]:
    from streams.snapshots import read_snapshots

    client = Redis.from_url(settings.redis_url or "", **redis_kwargs(settings))
    try:
        return await read_snapshots(client, settings)
    finally:
        await client.aclose()


def live_models(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """Whole-version snapshots by (model, window)."""
    return {(s["model"], s["window"]): s for s in asyncio.run(_snapshots(settings)) if not s["segment"]}


class AlertFeed:
    """Prints the drift alerts as they fire (read from the recent-alerts list in Redis)."""

    def __init__(self, settings: Settings, say: Say) -> None:
        import redis

        self.client = redis.Redis.from_url(settings.redis_url or "", **redis_kwargs(settings))
        self.key = settings.key("alerts", "recent")
        self.say = say
        self.seen: set[str] = set()
        self.fired: list[dict[str, Any]] = []

    def poll(self) -> None:
        for raw in reversed(self.client.lrange(self.key, 0, 199)):
            alert = orjson.loads(raw)
            if alert["alert_id"] in self.seen:
                continue
            self.seen.add(alert["alert_id"])
            self.fired.append(alert)
            feature = f" [{alert['feature']}]" if alert.get("feature") else ""
            self.say(f"ALERT {alert['status']} {alert['severity']} {alert['kind']}{feature} at "
                     f"{alert['detected_at'][:16]}: {alert['message']}")

    def close(self) -> None:
        self.client.close()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _progress_line(settings: Settings, expected_total: int) -> str:
    live = live_models(settings)
    done = sum(s["count"] for (m, w), s in live.items() if w == "cumulative")
    parts = [f"outcomes {done:,}/{expected_total:,}"]
    for (model, window), s in sorted(live.items()):
        if window == "rolling":
            parts.append(f"{model} rolling acc {_fmt(s['accuracy'], 3)}")
    return " | ".join(parts)


def table(settings: Settings, expected: dict[str, dict[str, float]]) -> tuple[str, list[dict[str, Any]]]:
    """The final table (text) and the rows behind it."""
    live = live_models(settings)
    cols = ("model", "window", "count", "accuracy", "offline acc", "f1_macro", "log_loss", "brier",
            "coverage", "delay p50 h", "delay p95 h")
    rows: list[dict[str, Any]] = []
    lines = []
    for (model, window), s in sorted(live.items()):
        exp = expected.get(model, {})
        row = {"model": model, "window": window, "count": s["count"], "accuracy": s["accuracy"],
               "offline acc": exp.get("accuracy") if window == "cumulative" else None,
               "f1_macro": s["f1_macro"], "log_loss": s["log_loss"], "brier": s["brier"],
               "coverage": s["label_coverage"],
               "delay p50 h": None if s["label_delay_p50"] is None else s["label_delay_p50"] / 3600,
               "delay p95 h": None if s["label_delay_p95"] is None else s["label_delay_p95"] / 3600}
        rows.append(row)
        lines.append([_fmt(row[c], 1 if c.startswith("delay") else 4) for c in cols])
    widths = [max(len(c), *(len(l[i]) for l in lines)) if lines else len(c) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(l, widths)) for l in lines]
    return "\n".join(out), rows


def day_rows(plan: DemoPlan, label_delay: int) -> list[list[tuple[str, bytes, bytes]]]:
    """Per row, its predictions followed by the labels of the row ``label_delay`` rows earlier;
    the last labels in extra rows at the end."""
    per_row: dict[int, list[ReplayEvent]] = {}
    for event in plan.events:
        per_row.setdefault(int(event.prediction.prediction_id.rsplit("-", 1)[1]), []).append(event)
    order = sorted(per_row)
    rows: list[list[tuple[str, bytes, bytes]]] = []
    for n, i in enumerate(order + [None] * label_delay):  # type: ignore[list-item]
        out = [] if i is None else [("predictions", e.prediction.prediction_id.encode(), e.prediction.to_json())
                                    for e in per_row[i]]
        if n >= label_delay:
            out += [("labels", e.label.prediction_id.encode(), e.label.to_json())
                    for e in per_row[order[n - label_delay]] if e.label is not None]
        rows.append(out)
    return rows


def run_demo(settings: Settings, *, say: Say, pretrain: int = 5000, label_delay: int = 48,
             limit: int | None = None, wait_timeout: float = 300.0, reviewers: int = 2) -> dict[str, Any]:
    """Publish the demo stream into a running loop and report; ``settings`` must be resolved.

    The replay goes out one day (``label_delay`` rows) at a time, each prediction followed by the
    label of the row a day earlier, and waits for the loop and the reviewers between days
    (:mod:`feedback_loop.lockstep`): reviewed items get their true class at once, the others a day
    late, as in production.
    """
    say(f"preparing Elec2: training the frozen model on the first {pretrain:,} rows ...")
    plan = build_events(pretrain, label_delay, limit)
    total = sum(int(e["count"]) for e in plan.expected.values())
    rows = day_rows(plan, label_delay)

    alerts = AlertFeed(settings, say)
    web = BackgroundWeb(settings).start()
    say(f"dashboard: {web.url}/   reviewer page: {web.url}/review")
    team = SimulatedReviewers(web.url, settings, plan.truth, reviewers).start()
    lockstep = Lockstep(settings, timeout=wait_timeout)
    started = time.monotonic()
    last = {"at": 0.0}

    def progress(done: int) -> None:
        if time.monotonic() - last["at"] < 2.0 and done < len(rows):
            return
        last["at"] = time.monotonic()
        say(f"day {done // label_delay:,} of {len(rows) // label_delay:,} ({time.monotonic() - started:.0f} s) | "
            + _progress_line(settings, total) + f" | reviewed {team.reviewed:,}, errors caught {team.caught:,}"
            + champion_line(settings))
        alerts.poll()

    try:
        publish_days(lockstep, rows, label_delay, progress, check=team.check)
        join, monitors, queue = lockstep.step_seconds
        say(f"published {total:,} predictions and their labels in {time.monotonic() - started:.0f} s "
            f"(flushing {lockstep.flush_seconds:.0f} s, waiting for the join {join:.0f} s, the monitors "
            f"{monitors:.0f} s, the review queue {queue:.0f} s)")
        return _finish(settings, plan, total, alerts, team, say, wait_timeout, label_delay)
    finally:
        lockstep.close()
        team.stop()
        web.stop()


def _finish(settings: Settings, plan: DemoPlan, total: int, alerts: AlertFeed, team: SimulatedReviewers,
            say: Say, wait_timeout: float, label_delay: int) -> dict[str, Any]:
    deadline = time.monotonic() + wait_timeout
    while True:
        live = live_models(settings)
        done = {m: live.get((m, "cumulative"), {}).get("count", 0) for m in plan.expected}
        if all(done[m] >= plan.expected[m]["count"] for m in plan.expected):
            break
        if time.monotonic() > deadline:
            raise FeedbackLoopError(
                f"the loop produced {sum(done.values()):,} of {total:,} outcomes within {wait_timeout:.0f} s; "
                f"see the worker log in {Path(settings.data_dir) / 'logs'}")
        alerts.poll()
        time.sleep(0.5)
    alerts.poll()
    alerts.close()
    team.stop()
    text, rows = table(settings, plan.expected)
    reviews = team.summary(plan)
    champion = champion_report(settings, plan, label_delay)
    client = redis_sync.Redis.from_url(settings.redis_url or "", **redis_kwargs(settings))
    try:
        queue_stats = {k.decode(): int(v) for k, v in client.hgetall(settings.key("review", "stats")).items()}
    finally:
        client.close()
    report = {"expected": plan.expected, "live": rows, "alerts": alerts.fired, "reviews": reviews,
              "review_queue": queue_stats, "champion": champion}
    path = Path(settings.data_dir) / "demo-report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    firing = [a for a in alerts.fired if a["status"] == "firing"]
    by_kind: dict[str, int] = {}
    for a in firing:
        by_kind[a["kind"]] = by_kind.get(a["kind"], 0) + 1
    text += "\n\nDrift alerts fired: " + (", ".join(f"{n} {k}" for k, n in sorted(by_kind.items())) or "none")
    text += "\n\n" + review_text(reviews)
    text += "\n\n" + champion["text"]
    report["table"] = text
    report["path"] = str(path)
    return report

