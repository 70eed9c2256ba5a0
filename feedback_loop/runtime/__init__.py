"""Running feedback-loop on one machine: child processes and embedded servers.

* :mod:`feedback_loop.runtime.processes`: :func:`spawn` children that die with
  their parent, :func:`stop` them in bounded time, :class:`ProcessGroup`, ports.
* :mod:`feedback_loop.runtime.embedded`: :class:`EmbeddedServers`, Tansu (Kafka
  protocol) and ``redis-server`` as children.

:class:`EmbeddedServers` is imported on first use, so that a worker that only
needs :mod:`~feedback_loop.runtime.processes` does not load the Kafka client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from feedback_loop.runtime.processes import (
    ProcessGroup,
    free_port,
    port_is_free,
    spawn,
    stop,
    wait_port_free,
)

if TYPE_CHECKING:
    from feedback_loop.runtime.embedded import EmbeddedServers

__all__ = [
    "EmbeddedServers",
    "ProcessGroup",
    "free_port",
    "port_is_free",
    "spawn",
    "stop",
    "wait_port_free",
]


def __getattr__(name: str) -> Any:
    if name == "EmbeddedServers":
        from feedback_loop.runtime.embedded import EmbeddedServers

        return EmbeddedServers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
