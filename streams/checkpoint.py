"""Partition checkpoints in Redis, fenced by an owner token.

Join state layout (``ns`` is ``Settings.redis_namespace``)::

    {ns}:join:{p}     hash  prediction_id -> entry            (streams.join.Entry.encode)
    {ns}:agg:{p}      hash  [model, version, tag, value] -> aggregate (streams.partition.Aggregate)
    {ns}:win:{p}      hash  [model, version, tag, value, predicted_at, id] -> rolling-window sample
    {ns}:meta:{p}     hash  offsets / watermark / counters
    {ns}:outbox:{p}   hash  the last batch's messages, published after the save (see claim)
    {ns}:owner:{p}    string  token of the worker that owns the partition
    {ns}:partitions   set   partitions that have state
    {ns}:version      int   bumped by every checkpoint, so readers can skip unchanged state
    {ns}:agglog       stream  per join checkpoint, the aggregates and window samples it changed
                      (trimmed to the last ``snapshot_log_seconds``; see streams.snapshots.SnapshotReader)

Monitor state (``monitor-input`` partitions) lives in ``{ns}:mon:{p}`` (model version -> monitor),
``{ns}:monref:{p}`` (its data-drift references, written once complete) and ``{ns}:monmeta:{p}``,
fenced by ``{ns}:monowner:{p}``.

A worker claims a partition before loading it; every save is a MULTI/EXEC guarded by WATCH on the
owner key, so a worker that lost the partition in a rebalance cannot overwrite the new owner's
state: it gets :class:`~feedback_loop.errors.OwnershipLostError` instead and must drop its copy.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Callable, Iterable

import orjson
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.commands.core import BasicKeyCommands, HashCommands, ListCommands, StreamCommands
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from feedback_loop.errors import OwnershipLostError, StoreUnavailableError
from feedback_loop.settings import Settings
from streams.partition import Emit, PartitionState
from streams.snapshots import log_entry


log = logging.getLogger(__name__)


def _bulk(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"a Redis argument must be bytes, str, int or float, not {type(value).__name__}")


def resp_command(args: Iterable[Any]) -> bytes:
    """One command in the Redis protocol (an array of bulk strings), as redis-py would send it
    (text as UTF-8, numbers as their ``repr``), at a fraction of the cost of its ``pack_command``
    for commands of many arguments.

    >>> resp_command(["HSET", "h", b"f", 1.5])
    b'*4\\r\\n$4\\r\\nHSET\\r\\n$1\\r\\nh\\r\\n$1\\r\\nf\\r\\n$3\\r\\n1.5\\r\\n'
    """
    parts = [b""]
    for arg in args:
        if type(arg) is not bytes:
            arg = _bulk(arg)
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    parts[0] = b"*%d\r\n" % (len(parts) - 1)
    return b"".join(parts)


class Commands(BasicKeyCommands, HashCommands, ListCommands, StreamCommands):
    """Collects commands, built by redis-py's own command methods (``hset(name, mapping=...)``,
    ``xadd``, ...), packed in the Redis protocol (:func:`resp_command`) as they come.

    >>> commands = Commands()
    >>> commands.hset("h", mapping={"a": 1}); commands.delete("k")
    >>> len(commands.packed), b"".join(commands.packed)[:21]
    (2, b'*4\\r\\n$4\\r\\nHSET\\r\\n$1\\r\\nh\\r\\n')
    """

    def __init__(self) -> None:
        self.packed: list[bytes] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.packed.append(resp_command(args))


#: ``fill(commands)``: issue a checkpoint's commands on a :class:`Commands`.
Fill = Callable[[Commands], None]


class Fence:
    """Claims partitions under one owner key family and writes only while still the owner."""

    def __init__(self, redis: Redis, settings: Settings, owner_kind: str, owner: str) -> None:
        self.redis, self.settings, self.owner_kind, self.owner = redis, settings, owner_kind, owner
        self._tokens: dict[int, bytes] = {}

    async def claim(self, partition: int, reads: list[str]) -> list[Any]:
        """Become the owner of ``partition``; return the HGETALL of each key in ``reads``."""
        token = f"{self.owner}:{uuid.uuid4().hex[:8]}".encode()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.settings.key(self.owner_kind, partition), token)
            for key in reads:
                pipe.hgetall(key)
            replies = await pipe.execute()
        self._tokens[partition] = token
        return replies[1:]

    def release(self, partition: int) -> None:
        self._tokens.pop(partition, None)

    async def write(self, partition: int, fill: Fill) -> None:
        """Run ``fill``'s commands in one transaction, if this worker still owns ``partition``.

        While Redis is unreachable (a restart, a failover) the write is retried with backoff for
        up to ``redis_retry_seconds``, then :class:`~feedback_loop.errors.StoreUnavailableError`
        is raised. A retried transaction may have been applied once already; every command in a
        checkpoint sets absolute values, so applying it twice leaves the same state.
        """
        await self._retrying(lambda: self.write_once(partition, fill))

    async def write_many(self, fills: dict[int, Fill]) -> set[int]:
        """:meth:`write` for several partitions in one transaction; return the partitions this
        worker no longer owns (nothing of theirs is written)."""
        return await self._retrying(lambda: self._write_many_once(fills))

    async def _retrying(self, attempt: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.settings.redis_retry_seconds
        delay = 0.05
        while True:
            try:
                return await attempt()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailableError(
                        f"Redis did not answer for {self.settings.redis_retry_seconds:.0f} s ({exc}); "
                        "check that it is running and reachable at redis_url") from exc
                log.warning("Redis unavailable (%s): checkpoint retried in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def write_once(self, partition: int, fill: Fill) -> None:
        """:meth:`write` without retries."""
        if await self._write_many_once({partition: fill}):
            raise OwnershipLostError(f"partition {partition} is owned by another worker now")

    async def _write_many_once(self, fills: dict[int, Fill]) -> set[int]:
        lost = {p for p in fills if p not in self._tokens}
        mine = sorted(p for p in fills if p not in lost)
        if not mine:
            return lost
        commands = Commands()
        commands.execute_command("MULTI")
        for p in mine:
            fills[p](commands)
        commands.incr(self.settings.key("version"))
        commands.execute_command("EXEC")
        keys = [self.settings.key(self.owner_kind, p) for p in mine]
        refused: set[int] = set()
        replies = None
        pool = self.redis.connection_pool
        connection = await pool.get_connection()
        try:
            # Two round trips on one connection, the commands packed here (redis-py's packing of
            # a checkpoint's thousands of arguments cost more than building them): WATCH the
            # owner keys and read them, then the transaction, which Redis runs only if no owner
            # key changed since the WATCH.
            await connection.send_packed_command(resp_command(["WATCH", *keys]) + resp_command(["MGET", *keys]))
            await connection.read_response()
            current = await connection.read_response()
            refused = {p for p, token in zip(mine, current) if token != self._tokens.get(p)}
            if refused:
                await connection.send_packed_command(resp_command(["UNWATCH"]))
                await connection.read_response()
            else:
                await connection.send_packed_command(commands.packed)
                for _ in range(len(commands.packed) - 1):  # OK to MULTI, QUEUED to every command
                    await connection.read_response()
                replies = await connection.read_response()
        except BaseException:
            await connection.disconnect()  # its replies may be half read
            raise
        finally:
            await pool.release(connection)
        if refused:  # another worker claimed them (a rebalance mid-batch): write the others
            return lost | refused | await self._write_many_once({p: fills[p] for p in mine if p not in refused})
        if replies is None:  # an owner key changed after the WATCH: find out which, again
            return lost | await self._write_many_once({p: fills[p] for p in mine})
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed
        return lost


class CheckpointStore:
    """Loads and saves :class:`~streams.partition.PartitionState` in Redis."""

    def __init__(self, redis: Redis, settings: Settings, owner: str | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.owner = owner or uuid.uuid4().hex[:12]
        self.fence = Fence(redis, settings, "owner", self.owner)

    def _keys(self, p: int) -> tuple[str, str, str, str]:
        k = self.settings.key
        return k("join", p), k("agg", p), k("win", p), k("meta", p)

    def new_state(self, partition: int) -> PartitionState:
        return PartitionState.for_settings(partition, self.settings)

    async def claim(self, partition: int, now: float) -> PartitionState:
        """Take ownership of ``partition`` and load its last checkpoint (``now``: wall time).

        The messages of the last batch saved (``{ns}:outbox:{p}``) come back as
        ``state.leftover``: the caller publishes them again before anything else, since the
        worker that saved them may have died before publishing them.
        """
        join_key, agg_key, win_key, meta_key = self._keys(partition)
        await self.redis.sadd(self.settings.key("partitions"), partition)
        entries, aggregates, meta, windows, outbox = await self.fence.claim(
            partition, [join_key, agg_key, meta_key, win_key, self.settings.key("outbox", partition)])
        state = self.new_state(partition)
        state.restore(entries, aggregates, meta, windows, now)
        state.leftover = [decode_outbox_item(outbox[k]) for k in sorted(outbox)]
        return state

    def release(self, partition: int) -> None:
        """Forget the token of a partition this worker no longer owns."""
        self.fence.release(partition)

    async def clear_outbox(self, partition: int) -> None:
        """Forget the last batch's messages once they are published (a handover in good order);
        best effort: if this fails, the next owner sends them again, identical."""
        key = self.settings.key("outbox", partition)
        try:
            await self.fence.write_once(partition, lambda pipe: pipe.delete(key))
        except Exception as exc:
            log.info("outbox of partition %d left for the next owner (%r)", partition, exc)

    def _fill(self, state: PartitionState, outbox: list[Emit] | None = None) -> Fill:
        join_key, agg_key, win_key, meta_key = self._keys(state.partition)
        outbox_key = self.settings.key("outbox", state.partition)
        items = {b"%08d" % i: encode_outbox_item(m) for i, m in enumerate(outbox or ())}
        log_key = self.settings.key("agglog")
        changes = state.changes()

        def fill(pipe: Commands) -> None:
            if changes.entries:
                pipe.hset(join_key, mapping=changes.entries)
            if changes.removed:
                pipe.hdel(join_key, *changes.removed)
            if changes.aggregates:
                pipe.hset(agg_key, mapping=changes.aggregates)
            if changes.window_removed:
                pipe.hdel(win_key, *changes.window_removed)
            if changes.window_set:
                pipe.hset(win_key, mapping=changes.window_set)
            pipe.hset(meta_key, mapping=changes.meta)
            pipe.delete(outbox_key)
            if items:
                pipe.hset(outbox_key, mapping=items)
            if changes.aggregates or changes.window_set or changes.window_removed:
                pipe.xadd(log_key, log_entry(state.partition, changes.aggregates, changes.window_set,
                                             changes.window_removed, changes.meta["counters"]),
                          minid=int((time.time() - self.settings.snapshot_log_seconds) * 1000), approximate=True)

        return fill

    async def save(self, state: PartitionState) -> None:
        """Write the state's changes atomically, if this worker still owns the partition."""
        await self.fence.write(state.partition, self._fill(state))
        state.mark_clean()

    async def save_many(self, states: list[PartitionState],
                        outboxes: dict[int, list[Emit]] | None = None) -> set[int]:
        """:meth:`save` several partitions in one transaction; return the partitions lost.

        ``outboxes``: per partition, the messages of this batch, stored with the state (the
        outbox) so that whoever owns the partition next publishes exactly these bytes again if
        this worker dies before publishing them (:meth:`claim`).
        """
        outboxes = outboxes or {}
        lost = await self.fence.write_many({s.partition: self._fill(s, outboxes.get(s.partition)) for s in states})
        for state in states:
            if state.partition not in lost:
                state.mark_clean()
        return lost


def encode_outbox_item(message: Emit) -> bytes:
    """One outbox entry: a JSON header ``[kind, key]`` (the key as latin-1 text), a newline, the value.

    >>> decode_outbox_item(encode_outbox_item(Emit("outcomes", b"p-1", b'{"a":1}')))
    Emit(kind='outcomes', key=b'p-1', value=b'{"a":1}')
    """
    key = None if message.key is None else message.key.decode("latin-1")
    return orjson.dumps([message.kind, key]) + b"\n" + message.value


def decode_outbox_item(raw: bytes) -> Emit:
    header, _, value = raw.partition(b"\n")
    kind, key = orjson.loads(header)
    return Emit(kind, None if key is None else key.encode("latin-1"), value)


def reset_join_state(client: SyncRedis, settings: Settings) -> int:
    """Delete every partition checkpoint and snapshot (the input topics were created anew)."""
    patterns = [settings.key(kind, "*") for kind in
                ("join", "agg", "win", "meta", "owner", "outbox", "mon", "monref", "monmeta", "monowner",
                          "route", "learn")]
    keys = [k for pattern in patterns for k in client.scan_iter(match=pattern, count=500)]
    keys += [settings.key(name) for name in ("partitions", "snapshots", "version", "estimates", "epoch", "history",
                                                       "learners", "agglog")]
    keys += [settings.key("alerts", "recent")]
    return int(client.delete(*keys)) if keys else 0


class MonitorStore:
    """Loads and saves :class:`~streams.monitor_state.MonitorPartition` in Redis.

    Besides the monitors it keeps the latest estimated accuracy per model version
    (``{ns}:estimates``) and the recent alerts (``{ns}:alerts:recent``, newest first, capped).
    """

    RECENT_ALERTS = 1000

    def __init__(self, redis: Redis, settings: Settings, config: Any, signer: Any, owner: str,
                 routing: Any = None, learning: dict[str, Any] | None = None, registry: Any = None) -> None:
        self.redis, self.settings, self.config, self.signer = redis, settings, config, signer
        self.routing, self.learning, self.registry = routing, learning or {}, registry
        self.fence = Fence(redis, settings, "monowner", owner)

    async def epoch(self) -> str:
        """The deployment's epoch (made on first use, reset with the topics): part of alert ids."""
        key = self.settings.key("epoch")
        await self.redis.set(key, uuid.uuid4().hex[:12], nx=True)
        value = await self.redis.get(key)
        return value.decode() if isinstance(value, bytes) else str(value)

    async def claim(self, partition: int, now: float) -> Any:
        from streams.monitor_state import MonitorPartition

        k = self.settings.key
        monitors, references, meta, routers, learners = await self.fence.claim(
            partition, [k("mon", partition), k("monref", partition), k("monmeta", partition),
                        k("route", partition), k("learn", partition)])
        state = MonitorPartition(partition, self.config, await self.epoch(), self.routing, learning=self.learning)
        state.restore(monitors, references, meta, self.signer, routers, learners)
        for model in state.refused_learners:
            await asyncio.to_thread(self._from_registry, state, model)
        return state

    def _from_registry(self, state: Any, model: str) -> None:
        """A learner whose partition checkpoint was refused resumes from the registry's last good
        versions of its challengers (or from scratch), and says so."""
        from online_models.learner import ModelLearner

        learner = ModelLearner(model, self.learning[model])
        if self.registry is not None:
            for name in learner.challengers:
                found, refusals = self.registry.load_latest(model, name)
                if found is not None:
                    learner.challengers[name] = found.estimator
                    learner.updates[name] = int(found.meta.get("updates", 0))
                    log.warning("%s: challenger %s resumes from registry version %s (%d updates)%s", model,
                                name, found.version, learner.updates[name],
                                f"; refused: {refusals}" if refusals else "")
            champion = self.registry.champion(model)
            if champion is not None:
                from online_models.learner import Champion

                name = champion["version"].rsplit("-u", 1)[0]
                learner.champion = Champion(champion["version"], name if name in learner.challengers else None,
                                            champion.get("previous"))
        state.learners[model] = learner

    async def checkpoint_learners(self, states: list[Any]) -> None:
        """Write every challenger with updates since its last registry version (at shutdown)."""
        if self.registry is None:
            return
        saves = []
        for state in states:
            for model, learner in state.learners.items():
                for name in learner.challengers:
                    if learner.updates[name] > learner.checkpointed[name][0]:
                        saves.append((model, name, learner.version_of(name), learner.challengers[name],
                                      learner.updates[name]))

        def write() -> None:
            for model, name, version, estimator, updates in saves:
                self.registry.save(model, name, estimator, updates=updates, version=version)
                log.info("%s: challenger %s saved to the registry as %s at shutdown", model, name, version)

        await asyncio.to_thread(write)

    async def before_publish(self, state: Any) -> None:
        """Registry writes and champion pointers decided in the batch, before its messages go out
        (a handle told of a new champion finds its version)."""
        saves, changes = list(state.registry_saves), list(state.champion_changes)
        if self.registry is None or not (saves or changes):
            state.registry_saves.clear()
            state.champion_changes.clear()
            return

        def write() -> None:
            for model, name, version, estimator, updates in saves:
                self.registry.save(model, name, estimator, updates=updates, version=version)
            for model, version, previous, action in changes:
                self.registry.set_champion(model, version, previous=previous, reason=action)

        await asyncio.to_thread(write)
        state.registry_saves.clear()
        state.champion_changes.clear()

    def release(self, partition: int) -> None:
        self.fence.release(partition)

    async def save(self, state: Any) -> None:
        k = self.settings.key
        changes = await asyncio.to_thread(state.changes, self.signer)  # pickles and signs: off the loop

        def fill(pipe: Commands) -> None:
            if changes.monitors:
                pipe.hset(k("mon", state.partition), mapping=changes.monitors)
            if changes.references:
                pipe.hset(k("monref", state.partition), mapping=changes.references)
            if changes.routers:
                pipe.hset(k("route", state.partition), mapping=changes.routers)
            if changes.learners:
                pipe.hset(k("learn", state.partition), mapping=changes.learners)
                pipe.hset(k("learners"), mapping=changes.learner_reports)
            if changes.estimates:
                pipe.hset(k("estimates"), mapping=changes.estimates)
            pipe.hset(k("monmeta", state.partition), mapping=changes.meta)
            if changes.alerts:
                pipe.lpush(k("alerts", "recent"), *changes.alerts)
                pipe.ltrim(k("alerts", "recent"), 0, self.RECENT_ALERTS - 1)

        await self.fence.write(state.partition, fill)
        state.mark_clean()
