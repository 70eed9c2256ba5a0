"""Which asyncio event loop the long-running processes (worker, web) run on.

``uvloop`` (the default, ``FEEDBACK_LOOP_EVENT_LOOP``) is libuv's event loop, compiled with
Cython: the loop's own bookkeeping and the socket I/O to Kafka and Redis take less CPU per event
than in Python's ``asyncio`` loop, which stays available as ``asyncio``.

Examples
--------
>>> import asyncio
>>> async def name():
...     return type(asyncio.get_running_loop()).__module__.split(".")[0]
>>> run_on("uvloop", name())
'uvloop'
>>> run_on("asyncio", name())
'asyncio'
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")

#: the names ``FEEDBACK_LOOP_EVENT_LOOP`` accepts
EVENT_LOOPS = ("uvloop", "asyncio")


def _policy(name: str) -> asyncio.AbstractEventLoopPolicy:
    if name == "uvloop":
        import uvloop

        return uvloop.EventLoopPolicy()
    if name == "asyncio":
        return asyncio.DefaultEventLoopPolicy()
    raise ValueError(f"unknown event loop {name!r}: use one of {', '.join(EVENT_LOOPS)}")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function that makes a new event loop of kind ``name`` (one of :data:`EVENT_LOOPS`),
    whatever the process's policy is."""
    return _policy(name).new_event_loop


def use_event_loop(name: str) -> None:
    """Make every event loop this process creates from now on (the main thread's, and the one of
    Faust's consumer thread) of kind ``name``; call it before anything creates a loop."""
    asyncio.set_event_loop_policy(_policy(name))


def run_on(name: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on a new event loop of kind ``name``, then close that loop."""
    loop = loop_factory(name)()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
