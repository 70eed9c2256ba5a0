"""The join agent: predictions, labels and review flags in; outcomes, dead letters and monitor
observations out.

Diverts, never crashes, on bad input: every undecodable, invalid, oversized or mis-keyed message
becomes a dead letter (see :meth:`streams.partition.PartitionState.apply`). It crashes (and the
worker restarts it from the last committed offsets) only when Kafka or Redis fail. The batch loop
is :mod:`streams.agents.partitioned`.
"""

from __future__ import annotations

import time
from typing import Any

import faust

from feedback_loop.settings import Settings
from streams.agents import partitioned
from streams.checkpoint import CheckpointStore
from streams.topics import StreamTopics


def register(app: faust.App, settings: Settings, topics: StreamTopics, store: CheckpointStore,
             activity: dict[str, Any]) -> partitioned.PartitionStates:
    """Add the join agent and its expiry timer to ``app``; return its partition states."""
    states = partitioned.PartitionStates(store)
    partitioned.register(app, "join", topics.join_sources, set(settings.topics[:3]), settings.batch_max,
                         settings.batch_within_seconds, topics, states, activity)

    @app.timer(settings.expiry_interval_seconds)
    async def expire_idle() -> None:
        """Expiry also runs while no events arrive (idle inputs release the watermark)."""
        for partition in states.owned():
            async with states.locks[partition]:
                state = states.loaded(partition)
                if state is not None and state.expire(time.time()):
                    await partitioned.publish_and_save(app, topics, states, state, [])

    return states
