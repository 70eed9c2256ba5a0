"""Simulated reviewers for the demo: they work the review queue through the real HTTP API.

Each reviewer is a thread that claims the next item (``POST /api/review/next`` with its bearer
token), looks up the truth the demo knows, and answers ``error`` with the corrected label or
``correct`` (``POST /api/review/{id}``), which publishes a ReviewFlag like a click on the page.
The demo's web server runs in a background thread (:class:`BackgroundWeb`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from feedback_loop.errors import RuntimeStartError
from feedback_loop.settings import Settings


class BackgroundWeb:
    """The HTTP API served on a free loopback port from a thread's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="demo-web", daemon=True)
        self.runner: Any = None
        self.port = 0

    def start(self) -> BackgroundWeb:
        from feedback_loop.web import start_web

        self.thread.start()
        try:
            self.runner, self.port = asyncio.run_coroutine_threadsafe(
                start_web(self.settings, "127.0.0.1", 0), self.loop).result(30)
        except Exception as exc:  # noqa: BLE001 - reported as a start failure with its cause
            self.stop()
            raise RuntimeStartError(f"the demo's web server did not start: {exc}") from exc
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            if self.runner is not None:
                asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(15)
                self.runner = None
        finally:
            if self.loop.is_running():
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(15)


class SimulatedReviewers:
    """Reviewers answering the queue with the truth (see module doc)."""

    def __init__(self, url: str, settings: Settings, truth: dict[str, tuple[str, str]], count: int) -> None:
        self.url = url
        self.truth = truth
        self.tokens = [(name, token.get_secret_value())
                       for name, token in list(settings.reviewer_tokens.items())[:count]]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.verdicts: list[dict[str, Any]] = []
        self.failures: Counter[str] = Counter()
        self.threads = [threading.Thread(target=self._work, args=(token,), name=f"reviewer-{name}", daemon=True)
                        for name, token in self.tokens]

    def start(self) -> SimulatedReviewers:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(10)

    def check(self) -> None:
        """Raise if a reviewer thread died (the demo would wait for answers forever)."""
        dead = [t.name for t in self.threads if not t.is_alive()]
        if dead and not self._stop.is_set():
            raise RuntimeStartError(f"simulated reviewers {dead} stopped unexpectedly; failures: {dict(self.failures)}")

    @property
    def reviewed(self) -> int:
        return len(self.verdicts)

    @property
    def caught(self) -> int:
        return sum(v["verdict"] == "error" for v in self.verdicts)

    def _post(self, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def _work(self, token: str) -> None:
        while not self._stop.is_set():
            try:
                status, reply = self._post("/api/review/next", token)
            except (urllib.error.URLError, OSError) as exc:
                self.failures[f"next: {exc}"] += 1
                self._stop.wait(1.0)
                continue
            item = reply.get("item") if status == 200 else None
            if item is None:
                self._stop.wait(0.02)
                continue
            pid = item["prediction_id"]
            prediction, truth = self.truth.get(pid, (None, None))
            if truth is None:
                self.failures["unknown prediction"] += 1
                continue
            body = {"verdict": "correct"} if truth == prediction else {"verdict": "error", "corrected_label": truth}
            status, reply = self._post(f"/api/review/{pid}", token, body)
            if status != 200:
                self.failures[f"verdict HTTP {status}: {reply.get('error', '')[:80]}"] += 1
                continue
            with self._lock:
                self.verdicts.append({"prediction_id": pid, "model": item["model"], "reason": item["reason"],
                                      "verdict": body["verdict"]})

    def summary(self, plan: Any) -> dict[str, Any]:
        """Per model: items reviewed, model errors caught, and the share of all its errors."""
        out: dict[str, Any] = {}
        for model, expected in plan.expected.items():
            mine = [v for v in self.verdicts if v["model"] == model]
            errors = int(expected["count"] - expected["correct"])
            caught = sum(v["verdict"] == "error" for v in mine)
            share = len(mine) / expected["count"] if expected["count"] else 0.0
            out[model] = {"reviewed": len(mine), "errors_caught": caught, "model_errors": errors,
                          "capture": caught / errors if errors else 0.0, "review_share": share,
                          "random_expected_caught": share * errors,
                          "by_reason": dict(Counter(v["reason"] for v in mine))}
        out["failures"] = dict(self.failures)
        return out


def review_text(summary: dict[str, Any]) -> str:
    """The report's lines about the reviews."""
    lines = ["Reviews (simulated reviewers answering the queue through the HTTP API):"]
    for model, s in summary.items():
        if model == "failures":
            continue
        lines.append(
            f"  {model}: {s['reviewed']:,} reviewed ({s['review_share']:.1%} of predictions), "
            f"{s['errors_caught']:,} model errors caught = {s['capture']:.1%} of its {s['model_errors']:,} errors "
            f"(random review of as many: ~{s['random_expected_caught']:.0f}); by reason "
            + (", ".join(f"{k} {n}" for k, n in sorted(s["by_reason"].items())) or "none"))
    if summary.get("failures"):
        lines.append(f"  failed requests: {summary['failures']}")
    return "\n".join(lines)
