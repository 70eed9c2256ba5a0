"""A reviewer's verdict in a real browser, end to end: headless Chromium logs in on ``/review``,
marks the claimed prediction as an error with a corrected label, and the verdict reaches Kafka as
a ReviewFlag, revises the outcome, and changes the live accuracy on the dashboard.

Real broker and Redis, a worker process (join, metrics, review router), the review consumer in a
thread (``review-queue`` -> Redis queue) and the web server in-process. 60 predictions of ``m``
version ``1``; the first 20 get an agreeing ground-truth label (cumulative accuracy exactly 1.0),
the other 40 are routed to review by least confidence (the gate admits nothing before 20
predictions of the version). One "Error" verdict on an unlabeled prediction adds a wrong outcome:
accuracy 20/21. Screenshots of both pages go to ``build/screenshots/`` and the test's tmp_path.

Skipped, saying what is missing, only where Chromium or Playwright's package is not installed
(``make test`` installs Debian's chromium when it can).
"""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaProducer

from consumers.reviews import ReviewConsumer
from e2e_worker import TopicReader, wait_for, wait_quiet
from support.browser import chromium, save_screenshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOKEN = "ana-browser-token-7f3c"
N_PREDICTIONS, N_LABELED = 60, 20
ROW = '#models-table tbody tr[data-model="m"][data-version="1"]'
CLASSES = ("yes", "no")


def make_events(start: datetime) -> tuple[dict[str, dict[str, Any]], list[tuple[str, bytes, bytes]]]:
    """60 predictions one minute apart, confidences 0.55..0.94; agreeing labels for the first 20."""
    predictions: dict[str, dict[str, Any]] = {}
    messages: list[tuple[str, bytes, bytes]] = []
    for i in range(N_PREDICTIONS):
        pid = f"b-{i:03d}"
        ts = start + timedelta(minutes=i)
        p = 0.55 + (i * 7 % 40) / 100.0
        pred, other = CLASSES[i % 2], CLASSES[1 - i % 2]
        event = {"prediction_id": pid, "model": "m", "model_version": "1", "timestamp": ts.isoformat(),
                 "features": {"x": round(p * 10, 3), "segment": "abc"[i % 3]},
                 "prediction": pred, "scores": {pred: p, other: round(1.0 - p, 6)}}
        predictions[pid] = event
        messages.append(("predictions", pid.encode(), orjson.dumps(event)))
    for i in range(N_LABELED):
        pid = f"b-{i:03d}"
        ts = start + timedelta(minutes=i, seconds=30)
        messages.append(("labels", pid.encode(), orjson.dumps(
            {"prediction_id": pid, "label": predictions[pid]["prediction"], "timestamp": ts.isoformat()})))
    return predictions, messages


def produce(settings: Any, messages: list[tuple[str, bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all")
    try:
        for kind, key, value in messages:
            producer.send(settings.topic(kind), key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


def model_row(server: Any) -> dict[str, Any] | None:
    """The cumulative whole-version snapshot of m/1 from the API, if any."""
    for snap in server.get_json("/api/models"):
        if (snap["model"], snap["model_version"], snap["window"]) == ("m", "1", "cumulative") \
                and not snap.get("segment"):
            return snap
    return None


def consumer_lag(settings: Any, group: str, readers: list[TopicReader]) -> dict[str, int]:
    """Records the consumer ``group`` has not committed yet, up to what ``readers`` read, by partition."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=20_000)
    try:
        done = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    lag = {}
    for reader in readers:
        for tp in reader.tps:
            end, meta = reader.consumer.position(tp), done.get(tp)
            committed = meta.offset if meta is not None and meta.offset is not None and meta.offset >= 0 else 0
            if end > committed:
                lag[f"{tp.topic}[{tp.partition}]"] = end - committed
    return lag


DASHBOARD_STATE = """(row) => {
  const tr = document.querySelector(row);
  const cell = (cls) => tr ? tr.querySelector('td.' + cls) : null;
  return {
    accuracy: cell('acc-cumulative') ? cell('acc-cumulative').getAttribute('data-value') : null,
    accuracyText: cell('acc-cumulative') ? cell('acc-cumulative').textContent : null,
    count: cell('count') ? cell('count').getAttribute('data-value') : null,
    errorsFound: document.getElementById('errors-found').textContent,
    updated: document.getElementById('updated').textContent,
    banner: document.getElementById('error-banner').textContent,
  };
}"""


@pytest.fixture
def browser() -> Any:
    with chromium() as launched:
        yield launched


class ReviewsThread:
    """The review consumer running in a thread of the test; :meth:`stop` is bounded."""

    def __init__(self, settings: Any) -> None:
        self.consumer = ReviewConsumer(settings)  # group <app_id>-reviews
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="e2e-reviews", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.consumer.run(stop=self.stopping)
        except BaseException as exc:  # noqa: BLE001 - shown by check_alive / stop
            self.error = exc

    def check_alive(self) -> None:
        if not self.thread.is_alive():
            raise AssertionError(f"the review consumer thread ended: {self.error!r}")

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)
        alive = self.thread.is_alive()
        if not alive:
            self.consumer.close()
        assert not alive, f"the review consumer thread did not stop within {timeout:.0f} s"
        assert self.error is None, f"the review consumer failed: {self.error!r}"


@pytest.fixture
def review_consumer() -> Any:
    """``start(settings)``: a :class:`ReviewsThread`; stopped at teardown."""
    running: list[ReviewsThread] = []

    def start(settings: Any) -> ReviewsThread:
        running.append(ReviewsThread(settings))
        return running[-1]

    yield start
    for reviews in running:
        reviews.stop()


def test_reviewer_marks_an_error_in_the_browser_and_the_dashboard_accuracy_drops(
        browser, make_settings, worker_factory, web_factory, review_consumer, tmp_path) -> None:
    began = time.monotonic()
    settings = make_settings(partitions=4, reviewer_tokens={"ana": TOKEN}, review_budget_per_hour=100_000,
                             review_policies=["least_confidence"])
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=N_PREDICTIONS + 10)
    predictions, messages = make_events(start)

    worker = worker_factory(settings)
    server = web_factory(settings)
    reviews = review_consumer(settings)
    produce(settings, messages)

    # 1. The join has the 20 labeled outcomes, the router has queued the unlabeled predictions.
    seen: dict[str, Any] = {}

    def labeled_outcomes() -> bool:
        worker.check_alive()
        seen["row"] = model_row(server)
        return bool(seen["row"]) and seen["row"]["count"] == N_LABELED and seen["row"]["predictions"] == N_PREDICTIONS

    wait_for(f"/api/models to show {N_LABELED} outcomes of {N_PREDICTIONS} predictions of m/1", labeled_outcomes,
             timeout=45, on_timeout=lambda: f"last m/1 cumulative snapshot: {seen.get('row')}\n{worker.log_tail(30)}")
    assert seen["row"]["accuracy"] == 1.0

    # The router has seen every observation (60 predictions, 20 outcomes) and the review consumer
    # has applied every request and label: no item about a labeled prediction can still be claimable.
    def monitored() -> bool:
        worker.check_alive()
        seen["beat"] = worker.heartbeat() or {}
        return seen["beat"].get("events", {}).get("monitor_events", 0) >= N_PREDICTIONS + N_LABELED

    wait_for(f"the worker's monitor to see {N_PREDICTIONS + N_LABELED} observations", monitored, timeout=30,
             on_timeout=lambda: f"last heartbeat: {seen.get('beat')}")
    readers = [TopicReader(settings, "review-queue"), TopicReader(settings, "outcomes")]
    try:
        wait_quiet(readers, quiet_seconds=1.0, timeout=30)

        def applied() -> bool:
            reviews.check_alive()
            seen["lag"] = consumer_lag(settings, f"{settings.app_id}-reviews", readers)
            return not seen["lag"]

        wait_for("the review consumer to apply every review request and outcome", applied, timeout=30,
                 interval=0.3, on_timeout=lambda: f"uncommitted records by partition: {seen.get('lag')}")
    finally:
        for reader in readers:
            reader.close()

    def queued() -> bool:
        seen["stats"] = server.get_json("/api/review/stats")
        return seen["stats"].get("depth", 0) > 0

    wait_for("review items in the Redis queue (/api/review/stats depth > 0)", queued, timeout=30,
             on_timeout=lambda: f"last stats: {seen.get('stats')}\n{worker.log_tail(30)}")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page_errors: list[str] = []
    console_errors: list[str] = []

    def watch(page: Any, name: str) -> Any:
        page.on("pageerror", lambda exc: page_errors.append(f"{name}: {exc}"))
        page.on("console", lambda msg: console_errors.append(f"{name}: {msg.text} ({msg.location.get('url')})")
                if msg.type == "error" and "/favicon.ico" not in (msg.location.get("url") or "") else None)
        return page

    try:
        # 2. The dashboard, before the verdict: cumulative accuracy exactly 1.
        dashboard = watch(context.new_page(), "dashboard")
        dashboard.goto(server.url + "/")

        def dashboard_state() -> dict[str, Any]:
            seen["dashboard"] = dashboard.evaluate(DASHBOARD_STATE, ROW)
            return seen["dashboard"]

        wait_for("the dashboard's m/1 row with 20 outcomes",
                 lambda: dashboard_state()["count"] == str(N_LABELED), timeout=15,
                 on_timeout=lambda: f"dashboard showed {seen.get('dashboard')}")
        assert float(seen["dashboard"]["accuracy"]) == 1.0, seen["dashboard"]
        assert seen["dashboard"]["accuracyText"] == "100.00%"

        # 3. The reviewer page: log in, take the claimed item, mark it an error with a corrected label.
        review = watch(context.new_page(), "review")
        review.goto(server.url + "/review")
        review.fill("#login-token", TOKEN)
        review.click("#login-submit")
        review.wait_for_url(server.url + "/review")
        assert review.inner_text("#reviewer-name") == "ana"

        def claimed() -> str:
            seen["item"] = review.inner_text("#item-id").strip()
            return seen["item"] if seen["item"] in predictions else ""

        pid = wait_for("the reviewer page to show a claimed prediction id", claimed, timeout=15,
                       on_timeout=lambda: f"#item-id {seen.get('item')!r}, #status {review.inner_text('#status')!r}")
        predicted = predictions[pid]["prediction"]
        corrected = next(c for c in CLASSES if c != predicted)
        assert int(pid[2:]) >= N_LABELED, f"{pid} has a ground-truth label: it should not have been routed"
        assert review.inner_text("#item-prediction") == predicted
        note = f"browser test: {pid} is really {corrected}"
        review.fill("#corrected-label", corrected)
        review.fill("#note", note)
        review.click("#btn-error")
        wait_for("the reviewer page to say Saved",
                 lambda: review.inner_text("#status").startswith(f"Saved: error on {pid}"),
                 timeout=15, on_timeout=lambda: f"#status {review.inner_text('#status')!r}")
        wait_for("the verdict in the reviewer's history",
                 lambda: review.locator(f'#history li[data-prediction-id="{pid}"]').count() == 1, timeout=10)
        shots = save_screenshot(review, "review-after-error-verdict", tmp_path)

        # 4a. Kafka: exactly one ReviewFlag for it, stamped with the reviewer; a revised outcome.
        flags_reader, outcomes_reader = TopicReader(settings, "review-flags"), TopicReader(settings, "outcomes")
        try:
            def flags_for() -> list[Any]:
                flags_reader.catch_up()
                return [r for r in flags_reader.records if json.loads(r.value)["prediction_id"] == pid]

            wait_for(f"a ReviewFlag for {pid} on review-flags", flags_for, timeout=15)
            time.sleep(0.5)
            records = flags_for()
            assert len(flags_reader.records) == 1 and len(records) == 1, [r.value for r in flags_reader.records]
            flag = json.loads(records[0].value)
            assert records[0].key == pid.encode()
            assert (flag["reviewer"], flag["verdict"], flag["corrected_label"], flag["note"]) == (
                "ana", "error", corrected, note), flag

            def review_outcomes() -> list[dict[str, Any]]:
                outcomes_reader.catch_up()
                return [o for o in (json.loads(r.value) for r in outcomes_reader.records)
                        if o["prediction_id"] == pid]

            found = wait_for(f"the outcome of {pid} on outcomes", review_outcomes, timeout=30,
                             on_timeout=lambda: f"{len(outcomes_reader.records)} outcomes read\n{worker.log_tail(30)}")
            assert len(found) == 1, found  # never labeled before: the verdict's outcome is its first
            assert (found[0]["label_source"], found[0]["correct"], found[0]["label"], found[0]["prediction"]) == (
                "review", False, corrected, predicted), found[0]
        finally:
            flags_reader.close()
            outcomes_reader.close()

        # 4b. The dashboard, refreshing itself (no reload): 21 outcomes, accuracy 20/21, one error found.
        expected = N_LABELED / (N_LABELED + 1)

        def dashboard_changed() -> bool:
            state = dashboard_state()
            return (state["count"] == str(N_LABELED + 1) and state["errorsFound"] == "1"
                    and state["accuracy"] not in (None, "") and math.isclose(float(state["accuracy"]), expected,
                                                                             rel_tol=1e-9))

        wait_for("the dashboard to show 21 outcomes, accuracy 20/21 and 1 error found", dashboard_changed,
                 timeout=30, on_timeout=lambda: f"dashboard showed {seen.get('dashboard')}")
        assert seen["dashboard"]["accuracyText"] == f"{expected * 100:.2f}%"
        assert not seen["dashboard"]["banner"], seen["dashboard"]
        shots += save_screenshot(dashboard, "dashboard-after-error-verdict", tmp_path)
        assert not page_errors, f"uncaught errors in the pages: {page_errors}"
        if console_errors:
            print("browser console errors:", *console_errors, sep="\n  ")
    finally:
        context.close()
    print(f"browser review test: {pid} marked {corrected} (predicted {predicted}) in "
          f"{time.monotonic() - began:.1f} s; screenshots: {', '.join(map(str, shots))}")
