"""The fenced checkpoint write against a real Redis: only the owner writes, atomically, whatever
the size of the write, and a worker that lost a partition writes nothing of it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from feedback_loop.errors import OwnershipLostError
from feedback_loop.settings import Settings
from streams.checkpoint import Fence


def _settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, redis_namespace=f"fence-{uuid.uuid4().hex[:8]}")


def test_only_the_owner_writes_and_the_others_are_reported_lost(redis_url: str) -> None:
    async def main() -> None:
        settings = _settings(redis_url)
        redis = Redis.from_url(redis_url)
        try:
            w1, w2 = Fence(redis, settings, "owner", "w1"), Fence(redis, settings, "owner", "w2")
            for p in (0, 1, 2):
                await w1.claim(p, [])
            await w2.claim(1, [])  # a rebalance gave partition 1 to w2

            def fill(p: int):
                return lambda commands: commands.hset(settings.key("t", p), mapping={"by": "w1"})

            lost = await w1.write_many({p: fill(p) for p in (0, 1, 2, 3)})  # 3 was never claimed
            assert lost == {1, 3}
            assert await redis.hget(settings.key("t", 0), "by") == b"w1"
            assert await redis.hget(settings.key("t", 2), "by") == b"w1"
            assert not await redis.exists(settings.key("t", 1), settings.key("t", 3))
            assert int(await redis.get(settings.key("version"))) == 1  # one write, after the refusal
            with pytest.raises(OwnershipLostError):
                await w1.write(1, fill(1))
            assert not await redis.exists(settings.key("t", 1))
            await w2.write(1, lambda commands: commands.hset(settings.key("t", 1), mapping={"by": "w2"}))
            assert await redis.hget(settings.key("t", 1), "by") == b"w2"
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_a_large_write_lands_whole_and_a_failed_command_raises(redis_url: str) -> None:
    async def main() -> None:
        settings = _settings(redis_url)
        redis = Redis.from_url(redis_url)
        try:
            fence = Fence(redis, settings, "owner", "w1")
            await fence.claim(0, [])
            n = 20_000
            fields = {f"f{i}": f"v{i}".encode() for i in range(n)}
            items = [f"i{i}".encode() for i in range(n)]
            h, lst = settings.key("h", 0), settings.key("l", 0)

            def fill(commands) -> None:
                commands.hset(h, mapping=fields)
                commands.lpush(lst, *items)
                commands.hdel(h, *[f"f{i}" for i in range(0, n, 2)])
                commands.xadd(settings.key("log"), {"n": 1.5, "p": 0})

            await fence.write(0, fill)
            assert await redis.hgetall(h) == {k.encode(): v for i, (k, v) in enumerate(fields.items()) if i % 2}
            assert await redis.lrange(lst, 0, -1) == items[::-1]
            assert [e[1] for e in await redis.xrange(settings.key("log"))] == [{b"n": b"1.5", b"p": b"0"}]
            await redis.set(settings.key("s", 0), "text")
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await fence.write(0, lambda commands: commands.hset(settings.key("s", 0), mapping={"a": 1}))
            await fence.write(0, lambda commands: commands.hset(h, mapping={"after": 1}))  # the next write works
            assert await redis.hget(h, "after") == b"1"
        finally:
            await redis.aclose()

    asyncio.run(main())
