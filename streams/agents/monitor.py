"""The monitor agent: compact predictions and outcomes per model version in, drift alerts out.

Diverts, never crashes, on bad input (an undecodable observation is a dead letter); crashes only
when Kafka or Redis fail. Bad detector settings fail the worker at startup instead
(:meth:`streams.monitor.MonitorConfig.from_settings`). The batch loop is
:mod:`streams.agents.partitioned`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from feedback_loop.settings import Settings
from streams.agents import partitioned
from streams.checkpoint import MonitorStore
from streams.observations import PACK_MAX
from streams.topics import StreamTopics

log = logging.getLogger(__name__)


def register(app: faust.App, settings: Settings, topics: StreamTopics, store: MonitorStore,
             activity: dict[str, Any]) -> partitioned.PartitionStates:
    """Add the monitor agent to ``app``; return its partition states."""
    states = partitioned.PartitionStates(store)
    # Monitor checkpoints are large (references, windows): batch up to a second of observations,
    # about ten join batches (a record packs up to PACK_MAX observations).
    partitioned.register(app, "monitor", topics.monitor_input, {settings.topics.monitor_input},
                         max(1, 10 * settings.batch_max // PACK_MAX), settings.monitor_batch_within_seconds,
                         topics, states, activity)

    @app.on_before_shutdown.connect
    async def _checkpoint_learners(sender: Any, **kwargs: Any) -> None:
        """At shutdown (agents stopped), the challengers' latest weights go to the registry."""
        loaded = [states.loaded(p) for p in states.owned()]
        try:
            await asyncio.wait_for(store.checkpoint_learners([s for s in loaded if s is not None]),
                                   settings.shutdown_timeout_seconds / 2)
        except asyncio.TimeoutError:
            log.warning("registry checkpoints at shutdown did not finish in time")

    return states
