"""The review queue in Redis: what reviewers see next, with budgets, leases and one verdict per item.

Every rule runs in one Lua script per call, so concurrent consumers, web servers and replays never
see half an update. Keys, all under ``<ns>:review:``:

* ``pending`` ZSET, score ``-priority``, member ``<requested_at + 1e11, fixed width>|<pid>``: equal
  priorities come out earliest event first, and the last member is the one evicted;
  ``items`` HASH pid -> the item (request JSON, score, member, queued_at, reason, model);
* ``leases`` ZSET pid -> lease expiry; ``claimed_by`` HASH pid -> reviewer; ``holds`` HASH reviewer -> pid;
* ``seen`` / ``labeled`` ZSETs pid -> time queued / labeled; ``verdicts`` HASH pid -> verdict JSON with
  ``verdict_at`` ZSET pid -> time: all trimmed on each call after ``review_dedup_seconds``;
* ``taken`` HASH pid -> item taken by a verdict (for :meth:`ReviewQueue.undo_verdict`, one hour) with
  ``taken_at`` ZSET;
* ``stats`` HASH of counters; ``reviewers`` HASH reviewer -> verdicts; ``per_minute`` HASH minute -> verdicts
  (older than an hour dropped on each verdict);
* ``budget:<model>`` HASH ``{tokens, t}`` (token bucket, event time); ``history:<reviewer>`` LIST, newest
  first, capped at :data:`HISTORY_LENGTH`.

Times are the caller's ``now`` (epoch seconds) except the budget's, which is the request's event time.
Bad input is refused, never diverted: an unknown verdict raises
:class:`~feedback_loop.errors.InvalidEventError`, a second verdict
:class:`~feedback_loop.errors.ReviewConflictError`; Redis errors propagate to the caller.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import redis.asyncio as aredis

from feedback_loop.errors import (
    FeedbackLoopError,
    InvalidEventError,
    ReviewConflictError,
)
from feedback_loop.events import ReviewRequest
from feedback_loop.settings import Settings

__all__ = ["HISTORY_LENGTH", "KEYS", "OFFER_RESULTS", "ReviewQueue", "order_member"]

#: Static keys, ``<ns>:review:<name>``, passed to every script in this order.
KEYS = ("pending", "items", "leases", "claimed_by", "holds", "seen", "labeled", "verdicts",
        "verdict_at", "taken", "taken_at", "stats", "reviewers", "per_minute")
OFFER_RESULTS = ("queued", "duplicate", "labeled", "over_budget", "full", "queued_evicted")
HISTORY_LENGTH = 1000
_UNDO_SECONDS = 3600.0  # how long a verdict's queue item is kept for undo_verdict
_COUNTERS = ("offered", "queued", "duplicates", "labeled", "over_budget", "full", "evicted",
             "lease_expiries", "removed_labeled", "verdicts", "errors_found")

_PRELUDE = """
local PENDING, ITEMS, LEASES, CLAIMED, HOLDS, SEEN, LABELED, VERDICTS, VERDICT_AT, TAKEN, TAKEN_AT,
      STATS, REVIEWERS, MINUTES = unpack(KEYS, 1, 14)
local function trim(zset, hash, cutoff)
  local old = redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. cutoff, 'LIMIT', 0, 500)
  if #old > 0 then
    redis.call('ZREM', zset, unpack(old))
    if hash then redis.call('HDEL', hash, unpack(old)) end
  end
end
local function pid_of(member) return string.match(member, '^[^|]*|(.*)$') end
local function release(pid)
  local who = redis.call('HGET', CLAIMED, pid)
  if who then
    redis.call('HDEL', CLAIMED, pid)
    if redis.call('HGET', HOLDS, who) == pid then redis.call('HDEL', HOLDS, who) end
  end
  redis.call('ZREM', LEASES, pid)
end
local function remove(pid, env)
  local e = cjson.decode(env)
  redis.call('ZREM', PENDING, e.member)
  release(pid)
  redis.call('HDEL', ITEMS, pid)
  return e
end
local function requeue_expired(now)
  for _, pid in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now)) do
    release(pid)
    local env = redis.call('HGET', ITEMS, pid)
    if env then
      local e = cjson.decode(env)
      redis.call('ZADD', PENDING, e.score, e.member)
      redis.call('HINCRBY', STATS, 'lease_expiries', 1)
    end
  end
end
"""

_OFFER = """
local pid, env, score, member, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local priority, t, now, cutoff = tonumber(ARGV[5]), tonumber(ARGV[7]), ARGV[8], ARGV[9]
local capacity, rate, burst = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local function count(field) redis.call('HINCRBY', STATS, field, 1) end
count('offered')
trim(SEEN, false, cutoff); trim(LABELED, false, cutoff); trim(VERDICT_AT, VERDICTS, cutoff)
if redis.call('ZSCORE', SEEN, pid) or redis.call('HEXISTS', ITEMS, pid) == 1
   or redis.call('HEXISTS', VERDICTS, pid) == 1 then
  count('duplicates'); return 'duplicate'
end
if reason ~= 'label_error' and redis.call('ZSCORE', LABELED, pid) then count('labeled'); return 'labeled' end
local bucket = redis.call('HMGET', KEYS[15], 'tokens', 't')
local tokens, last = tonumber(bucket[1]), tonumber(bucket[2])
if not tokens or not last then tokens, last = burst, t end
tokens = math.min(burst, tokens + math.max(0, t - last) * rate)
last = math.max(last, t)
local function save(n)
  redis.call('HSET', KEYS[15], 'tokens', string.format('%.17g', n), 't', string.format('%.17g', last))
end
if tokens < 1 - 1e-9 then save(tokens); count('over_budget'); return 'over_budget' end
local result = 'queued'
if redis.call('ZCARD', PENDING) >= capacity then
  local low = redis.call('ZRANGE', PENDING, -1, -1, 'WITHSCORES')
  if priority <= -tonumber(low[2]) then save(tokens); count('full'); return 'full' end
  local low_pid = pid_of(low[1])
  local low_env = redis.call('HGET', ITEMS, low_pid)
  if low_env then remove(low_pid, low_env) else redis.call('ZREM', PENDING, low[1]) end
  count('evicted'); result = 'queued_evicted'
end
save(math.max(0, tokens - 1))
redis.call('ZADD', PENDING, score, member)
redis.call('HSET', ITEMS, pid, env)
redis.call('ZADD', SEEN, now, pid)
count('queued')
return result
"""

_MARK_LABELED = """
local pid, now, cutoff = ARGV[1], ARGV[2], ARGV[3]
trim(LABELED, false, cutoff)
redis.call('ZADD', LABELED, now, pid)
local env = redis.call('HGET', ITEMS, pid)
if not env or cjson.decode(env).reason == 'label_error' then return 0 end
remove(pid, env)
redis.call('HINCRBY', STATS, 'removed_labeled', 1)
return 1
"""

_CLAIM = """
local reviewer, now, expires = ARGV[1], ARGV[2], ARGV[3]
requeue_expired(now)
local pid = redis.call('HGET', HOLDS, reviewer)
if not (pid and redis.call('ZSCORE', LEASES, pid)) then
  local top = redis.call('ZRANGE', PENDING, 0, 0)
  if #top == 0 then return false end
  pid = pid_of(top[1])
  redis.call('ZREM', PENDING, top[1])
  redis.call('ZADD', LEASES, expires, pid)
  redis.call('HSET', CLAIMED, pid, reviewer)
  redis.call('HSET', HOLDS, reviewer, pid)
end
return {redis.call('HGET', ITEMS, pid), reviewer, redis.call('ZSCORE', LEASES, pid)}
"""

_RECORD_VERDICT = """
local pid, reviewer, verdict, head, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cutoff, undo_cutoff, minute, old_minute = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
trim(VERDICT_AT, VERDICTS, cutoff); trim(TAKEN_AT, TAKEN, undo_cutoff)
local prior = redis.call('HGET', VERDICTS, pid)
if prior then return {'conflict', prior} end
local reason, model = cjson.null, cjson.null
local env = redis.call('HGET', ITEMS, pid)
if env then
  local e = remove(pid, env)
  reason, model = e.reason, e.model
  redis.call('HSET', TAKEN, pid, env); redis.call('ZADD', TAKEN_AT, now, pid)
end
local record = head .. ',"reason":' .. cjson.encode(reason) .. ',"model":' .. cjson.encode(model) .. '}'
redis.call('HSET', VERDICTS, pid, record); redis.call('ZADD', VERDICT_AT, now, pid)
redis.call('LPUSH', KEYS[15], record); redis.call('LTRIM', KEYS[15], 0, tonumber(ARGV[10]) - 1)
redis.call('HINCRBY', STATS, 'verdicts', 1)
if verdict == 'error' then redis.call('HINCRBY', STATS, 'errors_found', 1) end
redis.call('HINCRBY', REVIEWERS, reviewer, 1)
redis.call('HINCRBY', MINUTES, minute, 1)
for _, m in ipairs(redis.call('HKEYS', MINUTES)) do
  if tonumber(m) < old_minute then redis.call('HDEL', MINUTES, m) end
end
return {'ok', record}
"""

_UNDO_VERDICT = """
local pid, expected = ARGV[1], ARGV[2]
local record = redis.call('HGET', VERDICTS, pid)
if not record then return 0 end
if record ~= expected then return -1 end
local v = cjson.decode(record)
local at = redis.call('ZSCORE', VERDICT_AT, pid)
redis.call('HDEL', VERDICTS, pid); redis.call('ZREM', VERDICT_AT, pid)
redis.call('LREM', KEYS[15], 1, record)
local function down(hash, field)
  if redis.call('HEXISTS', hash, field) == 1 and redis.call('HINCRBY', hash, field, -1) <= 0 then
    if hash ~= STATS then redis.call('HDEL', hash, field) end
  end
end
down(STATS, 'verdicts')
if v.verdict == 'error' then down(STATS, 'errors_found') end
down(REVIEWERS, v.reviewer)
if at then down(MINUTES, tostring(math.floor(tonumber(at) / 60) * 60)) end
local env = redis.call('HGET', TAKEN, pid)
if env then
  local e = cjson.decode(env)
  redis.call('HDEL', TAKEN, pid); redis.call('ZREM', TAKEN_AT, pid)
  redis.call('HSET', ITEMS, pid, env); redis.call('ZADD', PENDING, e.score, e.member)
end
return 1
"""

_PENDING = """
requeue_expired(ARGV[1])
local out = {}
for _, member in ipairs(redis.call('ZRANGE', PENDING, 0, tonumber(ARGV[2]) - 1)) do
  local env = redis.call('HGET', ITEMS, pid_of(member))
  if env then out[#out + 1] = env end
end
return out
"""

_STATS = """
requeue_expired(ARGV[1])
return {redis.call('HGETALL', STATS), redis.call('ZCARD', PENDING), redis.call('ZCARD', LEASES),
        redis.call('HGETALL', REVIEWERS), redis.call('HGETALL', MINUTES)}
"""


def order_member(prediction_id: str, requested_at: float) -> str:
    """The pending-ZSET member: sorts by event time (fixed width, shifted positive), then id.

    >>> order_member("p-1", 1_700_000_000.5)
    '101700000000.500000|p-1'
    >>> order_member("a", 9.0) < order_member("a", 10.0)
    True
    """
    return f"{requested_at + 1e11:019.6f}|{prediction_id}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, int]:
    return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _minute(now: float) -> int:
    """Start of the minute holding ``now`` (epoch seconds).

    >>> _minute(125.9)
    120
    """
    return math.floor(now / 60.0) * 60


def _item(envelope: Any) -> dict[str, Any]:
    env = json.loads(envelope)
    return {**json.loads(env["request"]), "queued_at": env["queued_at"]}


class ReviewQueue:
    """Pending review items, leases, verdicts and counters of one deployment, in Redis.

    Parameters
    ----------
    redis
        An asyncio Redis client (bytes or decoded responses both work).
    settings
        ``redis_namespace`` and the ``review_*`` settings (capacity, lease, budgets, dedup).

    Notes
    -----
    Capacity bounds the items waiting; a lease that expires returns its item even to a full
    queue, after which newcomers replace lower items one for one.
    """

    def __init__(self, redis: aredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = [settings.key("review", name) for name in KEYS]
        self._scripts = {name: redis.register_script(_PRELUDE + body) for name, body in (
            ("offer", _OFFER), ("mark_labeled", _MARK_LABELED), ("claim", _CLAIM),
            ("record_verdict", _RECORD_VERDICT), ("undo_verdict", _UNDO_VERDICT),
            ("pending", _PENDING), ("stats", _STATS))}

    async def _run(self, name: str, args: list[Any], extra_keys: tuple[str, ...] = ()) -> Any:
        return await self._scripts[name](keys=[*self.keys, *extra_keys], args=args)

    def budget_key(self, model: str) -> str:
        """HASH ``{tokens, t}`` of ``model``'s token bucket."""
        return self.settings.key("review", "budget", model)

    def history_key(self, reviewer: str) -> str:
        """LIST of ``reviewer``'s verdicts, newest first."""
        return self.settings.key("review", "history", reviewer)

    def _cutoff(self, now: float) -> str:
        return repr(float(now) - self.settings.review_dedup_seconds)

    async def offer(self, request: ReviewRequest, now: float) -> str:
        """Queue ``request`` unless a rule refuses it; returns one of :data:`OFFER_RESULTS`.

        Order of the rules: ``duplicate`` (queued or reviewed within the dedup window),
        ``labeled`` (ground truth known; not for ``label_error`` items), ``over_budget`` (the
        model's token bucket, refilled by event time ``requested_at``), ``full`` / ``queued_evicted``.
        """
        s = self.settings
        t = request.requested_at.timestamp()
        member = order_member(request.prediction_id, t)
        score = repr(-float(request.priority))
        envelope = json.dumps({"request": request.model_dump_json(), "score": score, "member": member,
                               "queued_at": float(now), "reason": request.reason, "model": request.model})
        rate = s.review_budgets.get(request.model, s.review_budget_per_hour) / 3600.0
        result = await self._run("offer", [
            request.prediction_id, envelope, score, member, repr(float(request.priority)), request.reason,
            repr(t), repr(float(now)), self._cutoff(now), s.review_queue_capacity, repr(rate),
            repr(float(s.review_budget_burst))], (self.budget_key(request.model),))
        return _text(result)

    async def mark_labeled(self, prediction_id: str, now: float) -> bool:
        """Remember that ground truth arrived; drop the item unless it is a ``label_error`` one.

        Returns ``True`` when an item left the queue (pending or leased).
        """
        return bool(await self._run("mark_labeled", [prediction_id, repr(float(now)), self._cutoff(now)]))

    async def claim(self, reviewer: str, now: float) -> dict[str, Any] | None:
        """Lease the next item to ``reviewer`` (or give back the one it holds); ``None`` if empty.

        The dict is the request's JSON fields plus ``claimed_by``, ``lease_expires_at`` and
        ``queued_at`` (epoch seconds).
        """
        expires = repr(float(now) + self.settings.review_lease_seconds)
        reply = await self._run("claim", [reviewer, repr(float(now)), expires])
        if not reply:
            return None
        envelope, who, lease = reply
        return {**_item(envelope), "claimed_by": _text(who), "lease_expires_at": float(lease)}

    async def record_verdict(self, prediction_id: str, reviewer: str, verdict: str, corrected_label: Any,
                             note: str | None, now: float) -> dict[str, Any]:
        """Store ``reviewer``'s verdict, take the item out of the queue, count it; return the record.

        Raises
        ------
        ReviewConflictError
            The prediction has a verdict already (kept for ``review_dedup_seconds``).
        InvalidEventError
            ``verdict`` is not ``"error"`` or ``"correct"``.
        """
        if verdict not in ("error", "correct"):
            raise InvalidEventError(f"verdict: must be 'error' or 'correct', got {verdict!r}")
        head = json.dumps({"prediction_id": prediction_id, "reviewer": reviewer, "verdict": verdict,
                           "corrected_label": corrected_label, "note": note, "at": float(now)})[:-1]
        status, record = await self._run("record_verdict", [
            prediction_id, reviewer, verdict, head, repr(float(now)), self._cutoff(now),
            repr(float(now) - _UNDO_SECONDS), str(_minute(now)), str(_minute(now) - 3600), HISTORY_LENGTH,
        ], (self.history_key(reviewer),))
        stored = json.loads(record)
        if _text(status) == "conflict":
            raise ReviewConflictError(prediction_id, stored.get("reviewer", "?"), stored)
        return stored

    async def undo_verdict(self, prediction_id: str) -> None:
        """Forget the verdict on ``prediction_id`` (its publication failed); requeue its item."""
        for _ in range(10):
            record = await self.redis.hget(self.settings.key("review", "verdicts"), prediction_id)
            if record is None:
                return
            reviewer = json.loads(record)["reviewer"]
            if await self._run("undo_verdict", [prediction_id, record], (self.history_key(reviewer),)) >= 0:
                return
        raise FeedbackLoopError(f"the verdict on {prediction_id!r} kept changing while it was undone; retry")

    async def pending(self, limit: int = 100, now: float | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` pending items, highest priority first (expired leases return first)."""
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        return [_item(env) for env in await self._run("pending", [repr(float(now)), int(limit)])]

    async def history(self, reviewer: str, limit: int = 100) -> list[dict[str, Any]]:
        """``reviewer``'s latest verdicts, newest first."""
        if limit <= 0:
            return []
        return [json.loads(raw) for raw in await self.redis.lrange(self.history_key(reviewer), 0, limit - 1)]

    async def stats(self, now: float) -> dict[str, Any]:
        """Queue depth, leases, verdict counts, throughput of the last 60 minutes and offer counters.

        Expired leases return to the queue first, so ``depth`` and ``leased`` are current.
        ``throughput_per_minute`` is 60 ``[minute_epoch, verdicts]`` pairs, oldest first, ending with
        the minute of ``now``; ``verdicts_last_hour`` is their sum. Offer counters: ``offered``,
        ``queued`` (evictions included), ``duplicates``, ``labeled``, ``over_budget``, ``full``,
        ``evicted``; also ``lease_expiries`` and ``removed_labeled`` (items a label took out).
        """
        counters, depth, leased, reviewers, minutes = await self._run("stats", [repr(float(now))])
        count = {name: 0 for name in _COUNTERS} | _pairs(counters)
        per_minute = _pairs(minutes)
        last = _minute(now)
        throughput = [[m, per_minute.get(str(m), 0)] for m in range(last - 59 * 60, last + 1, 60)]
        return {"depth": int(depth), "leased": int(leased), "verdicts": count["verdicts"],
                "errors_found": count["errors_found"], "per_reviewer": _pairs(reviewers),
                "verdicts_last_hour": sum(n for _, n in throughput), "throughput_per_minute": throughput,
                **{name: count[name] for name in _COUNTERS if name not in ("verdicts", "errors_found")}}
