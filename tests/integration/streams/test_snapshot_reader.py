"""The web's incremental snapshot reader against a real Redis: after every checkpoint it equals a
merge of everything read from scratch, through rebalances, trimming and a reset."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from redis.asyncio import Redis

from feedback_loop.settings import Settings
from streams.checkpoint import CheckpointStore, reset_join_state
from streams.partition import Record
from streams.snapshots import SnapshotReader, read_snapshots

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _settings(redis_url: str, **overrides) -> Settings:
    return Settings(redis_url=redis_url, redis_namespace=f"snap-{uuid.uuid4().hex[:8]}", rolling_window=25,
                    partitions=3, **overrides)


def _messages(rng: random.Random, n: int, partitions: int) -> list[Record]:
    """Predictions, labels (some twice, some disagreeing) and a few bad messages, shuffled a little."""
    out: list[Record] = []
    offsets: dict[tuple[str, int], int] = {}

    def add(topic: str, pid: str, body: dict | bytes) -> None:
        p = hash(pid) % partitions
        off = offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
        value = body if isinstance(body, bytes) else orjson.dumps(body)
        out.append(Record(topic, p, off, pid.encode(), value))

    for i in range(n):
        pid = f"p{i}"
        ts = START + timedelta(seconds=i)
        pred = rng.choice(["a", "b"])
        add("predictions", pid, {"prediction_id": pid, "model": rng.choice(["m1", "m2"]), "model_version": "1",
                                  "timestamp": ts.isoformat(), "features": {"x": i}, "prediction": pred,
                                  "scores": {"a": 0.6, "b": 0.4} if pred == "a" else {"a": 0.3, "b": 0.7},
                                  "tags": {"region": rng.choice(["eu", "us"])}})
        for _ in range(rng.choice([0, 1, 1, 2])):
            add("labels", pid, {"prediction_id": pid, "label": rng.choice(["a", "b"]),
                                "timestamp": (ts + timedelta(seconds=rng.randint(1, 50))).isoformat()})
        if i % 97 == 0:
            add("labels", pid, b"{broken")
    return out


def _strip(snaps: list[dict]) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "updated_at"} for s in snaps]


@pytest.mark.parametrize("log_seconds", [60.0, 0.001])
def test_reader_follows_checkpoints_exactly(redis_url: str, log_seconds: float) -> None:
    """``log_seconds`` 0.001: the log is trimmed at once, so the reader takes its reload path."""
    async def main() -> None:
        settings = _settings(redis_url, snapshot_log_seconds=log_seconds)
        redis = Redis.from_url(redis_url)
        try:
            rng = random.Random(5)
            records = _messages(rng, 600, settings.partitions)
            store = CheckpointStore(redis, settings, owner="w1")
            other = CheckpointStore(redis, settings, owner="w2")
            reader = SnapshotReader(redis, settings)
            states = {}
            assert (await reader.read())[0] == []
            by_partition: dict[int, list[Record]] = {}
            for r in records:
                by_partition.setdefault(r.partition, []).append(r)
            steps = 0
            while any(by_partition.values()):
                p = rng.choice([q for q, rs in by_partition.items() if rs])
                take = rng.randint(1, 40)
                batch, by_partition[p] = by_partition[p][:take], by_partition[p][take:]
                owner = store if steps % 7 else other  # a rebalance now and then: the other worker claims
                if p not in states or states[p][0] is not owner:
                    states[p] = (owner, await owner.claim(p, 0.0))
                state = states[p][1]
                state.apply_all(batch, 0.0)
                await owner.save(state)
                steps += 1
                if steps % 3 == 0 or not any(by_partition.values()):
                    got, changed = await reader.read()
                    assert changed
                    assert _strip(got) == _strip(await read_snapshots(redis, settings))
            final = _strip((await reader.read())[0])
            assert final and any(s["count"] for s in final)
            assert (await reader.read())[1] is False  # nothing changed, nothing recomputed
            if log_seconds >= 1:
                assert reader.full_loads == 1
            else:
                assert reader.full_loads > 1
            # reset: the reader notices the log is gone and shows the empty state
            from redis import Redis as SyncRedis
            reset_join_state(SyncRedis.from_url(redis_url), settings)
            await redis.incr(settings.key("version"))
            assert (await reader.read())[0] == []
        finally:
            await redis.aclose()

    asyncio.run(main())
