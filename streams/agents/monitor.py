"""The monitor agent: compact predictions and outcomes per model version in, drift alerts out.

Diverts, never crashes, on bad input (an undecodable observation is a dead letter); crashes only
when Kafka or Redis fail. Bad detector settings fail the worker at startup instead
(:meth:`streams.monitor.MonitorConfig.from_settings`). The batch loop is
:mod:`streams.agents.partitioned`.
"""

from __future__ import annotations

from typing import Any

import faust

from feedback_loop.settings import Settings
from streams.agents import partitioned
from streams.checkpoint import MonitorStore
from streams.topics import StreamTopics


def register(app: faust.App, settings: Settings, topics: StreamTopics, store: MonitorStore,
             activity: dict[str, Any]) -> partitioned.PartitionStates:
    """Add the monitor agent to ``app``; return its partition states."""
    states = partitioned.PartitionStates(store)
    # Monitor checkpoints are large (references, windows): batch up to a second of observations.
    partitioned.register(app, "monitor", topics.monitor_input, {settings.topics.monitor_input},
                         10 * settings.batch_max, settings.monitor_batch_within_seconds, topics, states,
                         activity)
    return states
