"""The poll loop the Kafka consumers share: poll until stopped or out of time, and back off,
exponentially and capped, after an outage.

A consumer class mixes in :class:`PollingLoop`, sets ``max_pause_seconds``, calls
:meth:`PollingLoop.init_loop` in its constructor and defines ``poll_once(timeout)`` returning a
stats object with ``add``. A Kafka error while polling is logged and retried after a pause; any
other error ends the loop (the caller reports it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, TypeVar

from kafka import errors as kerrors

log = logging.getLogger(__name__)
_Stats = TypeVar("_Stats")


class PollingLoop:
    """Run / stop / deadline / back-off of a polling consumer (see module doc)."""

    max_pause_seconds: float

    def init_loop(self) -> None:
        self._cancel = threading.Event()
        self._deadline: float | None = None
        self._consecutive_pauses = 0

    def poll_once(self, timeout: float = 1.0) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask :meth:`run_loop` (and a wait for a retry) to stop soon; thread-safe."""
        self._cancel.set()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_loop(self, stop: threading.Event | None, max_seconds: float | None, total: _Stats,
                 what: str) -> _Stats:
        """Poll until ``stop`` is set, the consumer is stopped, or ``max_seconds`` have passed;
        add each poll's stats to ``total`` and return it. ``what`` names the topics in logs."""
        previous = self._cancel
        if stop is not None:
            self._cancel = stop
        self._deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self._cancel.is_set():
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    total.add(self.poll_once(timeout=1.0 if remaining is None else min(1.0, remaining)))  # type: ignore[attr-defined]
                except kerrors.KafkaError as exc:
                    log.error("polling %s failed: %s; retrying", what, exc)
                    self._pause()
        finally:
            self._cancel = previous
            self._deadline = None
        return total

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _pause(self) -> None:
        """Wait before retrying after an outage: exponential, capped, cut short by stop/deadline."""
        delay = min(self.max_pause_seconds, 0.5 * 2 ** min(self._consecutive_pauses, 10))
        self._consecutive_pauses += 1
        remaining = self._remaining()
        if remaining is not None:
            delay = min(delay, max(remaining, 0.0))
        self._cancel.wait(delay)
