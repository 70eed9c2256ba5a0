"""The Redis review queue against a real Redis: the session's, and one of our own that restarts.

Every test has its own Redis namespace; time is the ``now`` argument (no sleeping) and event time
is each request's ``requested_at``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

import support.own_redis as support_own_redis
from consumers.review_queue import ReviewQueue
from feedback_loop.errors import InvalidEventError, ReviewConflictError
from feedback_loop.events import ReviewRequest
from feedback_loop.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
NOW = 1_800_000_000.0


def request(pid: str, priority: float = 0.5, at: float = 0.0, model: str = "churn", reason: str = "margin",
            **extra: Any) -> ReviewRequest:
    """A request whose event time is ``at`` seconds after T0."""
    return ReviewRequest(prediction_id=pid, model=model, model_version="v1", reason=reason, priority=priority,
                         prediction="yes", features={"age": 42, "x": 0.1 + 0.2}, scores={"yes": 0.55, "no": 0.45},
                         requested_at=T0 + timedelta(seconds=at), **extra)


class SyncQueue:
    """A :class:`ReviewQueue` whose coroutines run to completion on a private event loop."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        # A client from a URL does not retry by default: then the first command after a server
        # restart fails on the dead connection. With a retry it reconnects by itself.
        self.client = aredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 5))
        self.queue = ReviewQueue(self.client, settings)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.queue, name)
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))

    def ids(self, now: float = NOW) -> list[str]:
        return [item["prediction_id"] for item in self.pending(now=now)]

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@pytest.fixture
def make_queue(redis_url: str) -> Iterator[Callable[..., SyncQueue]]:
    """``make_queue(**settings)``: a queue in a fresh namespace; its keys are deleted afterwards."""
    made: list[SyncQueue] = []

    def make(url: str | None = None, **overrides: Any) -> SyncQueue:
        values: dict[str, Any] = {"redis_namespace": f"rq-{uuid.uuid4().hex[:10]}", "review_budget_burst": 1000.0}
        values.update(overrides)
        q = SyncQueue(url or redis_url, Settings(**values))
        made.append(q)
        return q

    yield make
    plain = redis_lib.Redis.from_url(redis_url)
    for q in made:
        keys = list(plain.scan_iter(match=f"{q.queue.settings.redis_namespace}:*"))
        if keys:
            plain.delete(*keys)
        q.close()
    plain.close()


# ----------------------------------------------------------------------------- order
def test_highest_priority_first_and_ties_by_event_time(make_queue) -> None:
    q = make_queue()
    for pid, priority, at in [("low", 0.1, 0), ("tie-late", 0.7, 30), ("top", 0.9, 50), ("tie-early", 0.7, 10),
                              ("mid", 0.5, 0)]:
        assert q.offer(request(pid, priority, at), NOW) == "queued"
    assert q.ids() == ["top", "tie-early", "tie-late", "mid", "low"]
    assert [q.claim(f"r{i}", NOW)["prediction_id"] for i in range(5)] == ["top", "tie-early", "tie-late", "mid", "low"]
    assert q.claim("r9", NOW) is None


def test_pending_items_carry_the_request_fields(make_queue) -> None:
    q = make_queue()
    r = request("p-1", 0.8, 0, reason="label_error", label="no", confidence=0.95, tags={"region": "eu"},
                policy_scores={"label_error": 0.8, "margin": 0.1})
    q.offer(r, NOW)
    [item] = q.pending(now=NOW)
    assert item == {**r.model_dump(mode="json"), "queued_at": NOW}
    assert item["features"]["x"] == 0.1 + 0.2 and item["requested_at"] == "2026-11-22T10:00:00Z"
    assert q.pending(limit=0, now=NOW) == []


# ----------------------------------------------------------------------------- leases
def test_lease_claim_reclaim_and_expiry(make_queue) -> None:
    q = make_queue(review_lease_seconds=300)
    q.offer(request("a", 0.9), NOW)
    q.offer(request("b", 0.5), NOW)

    first = q.claim("ana", NOW)
    assert (first["prediction_id"], first["claimed_by"], first["lease_expires_at"]) == ("a", "ana", NOW + 300)
    assert q.claim("ana", NOW + 100) == first  # the same item, same lease
    assert q.ids(NOW + 100) == ["b"]
    assert q.claim("bob", NOW + 100)["prediction_id"] == "b"
    assert q.stats(NOW + 100)["leased"] == 2

    # ana's lease ran out: "a" is pending again with its priority, and the next claim takes it.
    assert q.ids(NOW + 300) == ["a"]
    s = q.stats(NOW + 300)
    assert (s["depth"], s["leased"], s["lease_expiries"]) == (1, 1, 1)
    again = q.claim("carl", NOW + 301)
    assert (again["prediction_id"], again["claimed_by"], again["lease_expires_at"]) == ("a", "carl", NOW + 601)
    assert q.claim("ana", NOW + 302) is None  # nothing left for ana


def test_expired_lease_returns_with_its_original_priority(make_queue) -> None:
    q = make_queue(review_lease_seconds=60)
    q.offer(request("x", 0.6), NOW)
    q.claim("ana", NOW)
    q.offer(request("hi", 0.9), NOW)
    q.offer(request("lo", 0.2), NOW)
    assert q.ids(NOW + 61) == ["hi", "x", "lo"]


# ----------------------------------------------------------------------------- capacity
def test_full_queue_evicts_the_lowest_or_drops_the_newcomer(make_queue) -> None:
    q = make_queue(review_queue_capacity=3)
    for pid, priority, at in [("a", 0.5, 0), ("b", 0.3, 0), ("c", 0.3, 10)]:
        assert q.offer(request(pid, priority, at), NOW) == "queued"
    assert q.offer(request("d", 0.3, 0), NOW) == "full"  # not above the lowest (0.3)
    assert q.offer(request("e", 0.1, 0), NOW) == "full"
    assert q.offer(request("f", 0.4, 0), NOW) == "queued_evicted"  # evicts c: lowest, latest
    assert q.ids() == ["a", "f", "b"]
    assert q.offer(request("c", 0.9, 0), NOW) == "duplicate"  # evicted items are not routed again
    s = q.stats(NOW)
    assert (s["depth"], s["offered"], s["queued"], s["full"], s["evicted"], s["duplicates"]) == (3, 7, 4, 2, 1, 1)


# ----------------------------------------------------------------------------- dedup and labels
def test_duplicates_and_items_after_a_verdict(make_queue) -> None:
    q = make_queue()
    assert q.offer(request("p", 0.5), NOW) == "queued"
    assert q.offer(request("p", 0.9), NOW + 1) == "duplicate"
    q.record_verdict("p", "ana", "correct", None, None, NOW + 2)
    assert q.offer(request("p", 0.5), NOW + 3) == "duplicate"
    q.record_verdict("never-queued", "ana", "error", "no", None, NOW + 4)
    assert q.offer(request("never-queued", 0.5), NOW + 5) == "duplicate"
    assert q.ids() == []
    assert q.stats(NOW)["duplicates"] == 3


def test_dedup_markers_expire_after_the_window(make_queue) -> None:
    q = make_queue(review_dedup_seconds=1000)
    q.offer(request("p", 0.5), NOW)
    q.claim("ana", NOW)
    q.record_verdict("p", "ana", "correct", None, None, NOW)
    q.mark_labeled("l", NOW)
    assert q.offer(request("p"), NOW + 999) == "duplicate"
    assert q.offer(request("l"), NOW + 999) == "labeled"
    assert q.offer(request("p"), NOW + 1001) == "queued"
    assert q.offer(request("l"), NOW + 1001) == "queued"


def test_labeled_before_the_offer(make_queue) -> None:
    q = make_queue()
    assert q.mark_labeled("p", NOW) is False
    assert q.offer(request("p", 0.9), NOW + 1) == "labeled"
    assert q.offer(request("p", 0.9, reason="label_error", label="no"), NOW + 2) == "queued"
    assert q.ids() == ["p"]
    assert q.stats(NOW)["labeled"] == 1


def test_label_after_queueing_removes_the_item_but_not_a_label_error_item(make_queue) -> None:
    q = make_queue()
    q.offer(request("plain", 0.5), NOW)
    q.offer(request("leased", 0.9), NOW)
    q.offer(request("suspect", 0.7, reason="label_error", label="no"), NOW)
    assert q.claim("ana", NOW)["prediction_id"] == "leased"
    assert q.mark_labeled("plain", NOW + 1) is True
    assert q.mark_labeled("leased", NOW + 1) is True
    assert q.mark_labeled("suspect", NOW + 1) is False
    assert q.mark_labeled("plain", NOW + 2) is False  # already gone
    assert q.ids() == ["suspect"]
    assert q.claim("ana", NOW + 2)["prediction_id"] == "suspect"  # ana's lease went with its item
    s = q.stats(NOW + 2)
    assert (s["depth"], s["leased"], s["removed_labeled"]) == (0, 1, 2)


# ----------------------------------------------------------------------------- budget
def test_token_bucket_over_event_time(make_queue) -> None:
    # 60 items/hour = one per event-time minute; burst 3; starts full.
    q = make_queue(review_budget_per_hour=60, review_budget_burst=3)
    plan = [(0, "queued"), (0, "queued"), (0, "queued"), (0, "over_budget"), (30, "over_budget"),
            (60, "queued"),                      # one minute: one token
            (90, "over_budget"),                 # half a token
            (20, "over_budget"),                 # out of order: no refill, no rewind
            (120, "queued"),                     # the half plus another half
            (1000, "queued"), (1000, "queued"), (1000, "queued"), (1000, "over_budget")]  # refilled to 3, no more
    results = [q.offer(request(f"p{i}", 0.5, at), NOW) for i, (at, _) in enumerate(plan)]
    assert results == [want for _, want in plan]
    s = q.stats(NOW)
    assert (s["queued"], s["over_budget"]) == (8, 5)


def test_budget_is_per_model_with_overrides_and_spent_only_by_queued_items(make_queue) -> None:
    q = make_queue(review_budget_per_hour=60, review_budgets={"fraud": 3600}, review_budget_burst=2,
                   review_queue_capacity=3)
    assert [q.offer(request(f"c{i}", 0.5, 0), NOW) for i in range(3)] == ["queued", "queued", "over_budget"]
    # fraud refills one per event-time second, churn's empty bucket does not matter to it
    assert [q.offer(request(f"f{i}", 0.5, 0, model="fraud"), NOW) for i in range(3)] == \
        ["queued", "full", "full"]  # full spends nothing ...
    assert q.offer(request("f9", 0.9, 0, model="fraud"), NOW) == "queued_evicted"  # ... so a token is left
    assert q.offer(request("f10", 0.95, 0, model="fraud"), NOW) == "over_budget"
    assert q.offer(request("f11", 0.95, 1, model="fraud"), NOW) == "queued_evicted"  # one second, one token
    assert q.ids() == ["f11", "f9", "c0"]
    # an hour later churn's bucket is full again (2); a duplicate and a labeled item spend nothing
    q.mark_labeled("c-labeled", NOW)
    assert q.offer(request("c0", 0.9, 3600), NOW) == "duplicate"
    assert q.offer(request("c-labeled", 0.9, 3600), NOW) == "labeled"
    assert [q.offer(request(f"c{i}", 0.99, 3600), NOW) for i in (5, 6, 7)] == \
        ["queued_evicted", "queued_evicted", "over_budget"]
    assert q.ids() == ["c5", "c6", "f11"]


# ----------------------------------------------------------------------------- verdicts
def test_one_verdict_per_item(make_queue) -> None:
    q = make_queue()
    q.offer(request("p", 0.5, reason="entropy"), NOW)
    q.claim("ana", NOW)
    stored = q.record_verdict("p", "bob", "error", "no", "customer cancelled", NOW + 5)
    assert stored == {"prediction_id": "p", "reviewer": "bob", "verdict": "error", "corrected_label": "no",
                      "note": "customer cancelled", "at": NOW + 5, "reason": "entropy", "model": "churn"}
    assert q.claim("ana", NOW + 6) is None  # bob's verdict took ana's leased copy
    with pytest.raises(ReviewConflictError) as info:
        q.record_verdict("p", "ana", "correct", None, None, NOW + 7)
    assert info.value.reviewer == "bob" and info.value.existing == stored
    assert "already reviewed by 'bob'" in str(info.value) and "one verdict per item" in str(info.value)
    with pytest.raises(InvalidEventError):
        q.record_verdict("q", "ana", "maybe", None, None, NOW)
    outside = q.record_verdict("not-queued", "ana", "correct", 1.5, None, NOW + 8)
    assert (outside["reason"], outside["model"], outside["corrected_label"]) == (None, None, 1.5)
    assert q.stats(NOW + 8)["verdicts"] == 2


def test_undo_verdict_puts_the_item_back(make_queue) -> None:
    q = make_queue()
    q.offer(request("p", 0.8), NOW)
    q.offer(request("o", 0.5), NOW)
    q.claim("ana", NOW)
    q.record_verdict("p", "ana", "error", None, None, NOW + 1)
    q.record_verdict("elsewhere", "ana", "correct", None, None, NOW + 2)
    assert q.ids() == ["o"]

    q.undo_verdict("p")
    q.undo_verdict("elsewhere")
    q.undo_verdict("never-reviewed")  # nothing to undo: no error
    assert q.ids() == ["p", "o"]
    assert q.history("ana") == []
    s = q.stats(NOW + 3)
    assert (s["verdicts"], s["errors_found"], s["per_reviewer"], s["verdicts_last_hour"]) == (0, 0, {}, 0)
    again = q.record_verdict("p", "bob", "correct", None, None, NOW + 4)  # may be reviewed again
    assert again["reviewer"] == "bob" and q.ids() == ["o"]


def test_history_is_per_reviewer_newest_first(make_queue) -> None:
    q = make_queue()
    for i, who in enumerate(["ana", "bob", "ana", "ana"]):
        q.record_verdict(f"p{i}", who, "error" if i % 2 else "correct", None, f"note {i}", NOW + i)
    assert [v["prediction_id"] for v in q.history("ana")] == ["p3", "p2", "p0"]
    assert [v["note"] for v in q.history("ana", limit=2)] == ["note 3", "note 2"]
    assert [v["prediction_id"] for v in q.history("bob")] == ["p1"]
    assert q.history("nobody") == [] and q.history("ana", limit=0) == []


def test_stats_numbers(make_queue) -> None:
    q = make_queue(review_queue_capacity=4, review_budget_burst=5, review_budget_per_hour=1, review_lease_seconds=10)
    minute = NOW - NOW % 60
    for i, priority in enumerate([0.9, 0.8, 0.7, 0.6, 0.5, 0.95]):
        q.offer(request(f"p{i}", priority), minute)         # p4 is full; p5 evicts p3 (0.6)
    q.offer(request("p0", 0.9), minute)                      # duplicate
    q.mark_labeled("gone", minute)
    q.offer(request("gone", 0.9), minute)                    # labeled
    q.offer(request("late", 0.99, 10), minute)               # over budget: 5 spent
    q.claim("ana", minute)                                   # p5
    q.claim("bob", minute)                                   # p0, then its lease expires
    q.record_verdict("p5", "ana", "error", "no", None, minute + 1)
    q.record_verdict("p1", "ana", "correct", None, None, minute + 61)
    q.record_verdict("x", "carl", "error", None, None, minute - 3600)  # more than an hour ago
    s = q.stats(minute + 70)
    throughput = s.pop("throughput_per_minute")
    assert s == {"depth": 2, "leased": 0, "verdicts": 3, "errors_found": 2,
                 "per_reviewer": {"ana": 2, "carl": 1}, "verdicts_last_hour": 2,
                 "offered": 9, "queued": 5, "duplicates": 1, "labeled": 1, "over_budget": 1, "full": 1,
                 "evicted": 1, "lease_expiries": 1, "removed_labeled": 0}
    assert len(throughput) == 60 and throughput[-1] == [minute + 60, 1] and throughput[-2] == [minute, 1]
    assert throughput[0] == [minute - 58 * 60, 0] and sum(n for _, n in throughput) == 2
    assert q.ids(minute + 70) == ["p0", "p2"]


# ----------------------------------------------------------------------------- Redis restart
class OwnRedis(support_own_redis.OwnRedis):
    def stop(self) -> int | None:
        code = super().stop()
        assert code in (0, None)  # SIGTERM: a clean shutdown
        return code


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_queue_lease_and_dedup_survive_a_redis_restart(own_redis, make_queue) -> None:
    q = make_queue(url=own_redis.url, review_lease_seconds=300, review_budget_burst=10, review_budget_per_hour=60)
    for pid, priority, at in [("a", 0.2, 0), ("b", 0.9, 0), ("c", 0.5, 5), ("d", 0.5, 1)]:
        q.offer(request(pid, priority, at), NOW)
    lease = q.claim("ana", NOW)
    assert lease["prediction_id"] == "b"
    q.mark_labeled("l", NOW)

    own_redis.stop()
    own_redis.start()

    # The same client and queue object keep working (it reconnects, the scripts are loaded again).
    assert q.ids(NOW + 1) == ["d", "c", "a"]
    assert q.claim("ana", NOW + 1) == lease
    assert q.offer(request("a", 0.9), NOW + 2) == "duplicate"
    assert q.offer(request("l", 0.9), NOW + 2) == "labeled"
    assert q.offer(request("b", 0.9), NOW + 2) == "duplicate"
    # four tokens were spent before the restart: six left at the same event time
    assert [q.offer(request(f"n{i}", 0.1), NOW) for i in range(7)] == ["queued"] * 6 + ["over_budget"]
    assert q.ids(NOW + 301)[:4] == ["b", "d", "c", "a"]  # the lease expired: b is back on top
