"""feedback_loop.runtime.event_loop: the event loop a process runs on, chosen by the settings.

(``tests/conftest.py`` restores the event loop policy after every test.)"""

from __future__ import annotations

import asyncio
import threading

import pytest
import uvloop
from pydantic import ValidationError

from feedback_loop.runtime.event_loop import loop_factory, run_on, use_event_loop
from feedback_loop.settings import Settings


def test_uvloop_is_the_default() -> None:
    assert Settings().event_loop == "uvloop"
    assert Settings(event_loop="asyncio").event_loop == "asyncio"


def test_an_unknown_loop_is_refused_by_the_settings_and_the_factory() -> None:
    with pytest.raises(ValidationError, match="event_loop"):
        Settings(event_loop="tokio")
    with pytest.raises(ValueError, match="unknown event loop 'tokio': use one of uvloop, asyncio"):
        loop_factory("tokio")


@pytest.mark.parametrize(("name", "kind"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)])
def test_use_event_loop_makes_every_new_loop_of_that_kind_in_any_thread(name, kind) -> None:
    use_event_loop(name)
    made = []

    def in_thread() -> None:  # as Faust's consumer thread makes its loop
        loop = asyncio.new_event_loop()
        made.append(loop)
        loop.close()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    main = asyncio.new_event_loop()
    try:
        assert isinstance(main, kind) and isinstance(made[0], kind)
        assert isinstance(main, uvloop.Loop) == (name == "uvloop")
        assert isinstance(made[0], uvloop.Loop) == (name == "uvloop")
    finally:
        main.close()


def test_run_on_returns_the_result_and_closes_its_loop() -> None:
    loops = []

    async def work(x: int) -> int:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return x * 2

    assert run_on("uvloop", work(21)) == 42
    assert run_on("asyncio", work(1)) == 2
    assert isinstance(loops[0], uvloop.Loop) and not isinstance(loops[1], uvloop.Loop)
    assert all(loop.is_closed() for loop in loops)


def test_run_on_asyncio_is_pythons_loop_even_under_uvloops_policy() -> None:
    async def kind() -> bool:
        return isinstance(asyncio.get_running_loop(), uvloop.Loop)

    use_event_loop("uvloop")
    assert run_on("asyncio", kind()) is False
    assert run_on("uvloop", kind()) is True
