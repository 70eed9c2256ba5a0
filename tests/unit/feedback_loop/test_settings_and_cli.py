"""Settings from the environment, flags over them, and the CLI's one-line errors."""

from __future__ import annotations

import pytest

from feedback_loop import cli
from feedback_loop.settings import Settings


def test_environment_then_flags(monkeypatch):
    monkeypatch.setenv("FEEDBACK_LOOP_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("FEEDBACK_LOOP_PARTITIONS", "4")
    args = cli.build_parser().parse_args(["up", "--partitions", "2"])
    settings = cli.load_settings(args)
    assert settings.kafka_bootstrap == "kafka:9092" and settings.partitions == 2


def test_settings_round_trip_through_the_environment(monkeypatch):
    original = Settings(kafka_bootstrap="k:1", redis_url="redis://r:2/0", topic_prefix="x.", partitions=3)
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_a_bad_setting_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setenv("FEEDBACK_LOOP_PARTITIONS", "zero")
    assert cli.main(["worker"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("feedback-loop: error: setting partitions (FEEDBACK_LOOP_PARTITIONS or --partitions)")
    assert "\n" not in err


def test_a_bad_setting_names_a_flag_only_where_the_command_has_one(monkeypatch, capsys):
    monkeypatch.setenv("FEEDBACK_LOOP_EVENT_LOOP", "tokio")
    assert cli.main(["worker"]) == 1
    assert capsys.readouterr().err.strip() == (
        "feedback-loop: error: setting event_loop (FEEDBACK_LOOP_EVENT_LOOP): Input should be 'uvloop' or 'asyncio'")
    monkeypatch.delenv("FEEDBACK_LOOP_EVENT_LOOP")
    monkeypatch.setenv("FEEDBACK_LOOP_PARTITIONS", "0")
    assert cli.main(["worker"]) == 1
    assert "(FEEDBACK_LOOP_PARTITIONS or --partitions)" in capsys.readouterr().err
    assert cli.main(["alerts"]) == 1  # no --partitions flag there
    assert "setting partitions (FEEDBACK_LOOP_PARTITIONS):" in capsys.readouterr().err


def test_worker_without_servers_says_what_to_do(monkeypatch, capsys):
    for name in ("FEEDBACK_LOOP_KAFKA_BOOTSTRAP", "FEEDBACK_LOOP_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["worker"]) == 1
    assert "feedback-loop up" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["up", "worker", "web", "replay", "alerts", "reviews", "schema", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert "usage: feedback-loop" in capsys.readouterr().out


def test_up_refuses_a_taken_web_port_before_starting_anything(capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert cli.main(["up", "--web-port", str(port)]) == 1
    assert f"port {port} on 127.0.0.1 is taken" in capsys.readouterr().err


def test_a_stop_signal_raised_inside_an_asyncio_write_is_not_swallowed() -> None:
    """``up`` stops on SIGTERM whatever the event loop is doing when it lands: asyncio's transports
    log and swallow any exception raised while they write, except ``KeyboardInterrupt`` and
    ``SystemExit``, so the stop raised by the signal handler must be one of those (a stop landing
    in the web server's response write was lost, and ``up`` ran on)."""
    import asyncio
    import socket

    import pytest

    from feedback_loop import cli

    class Interrupted:
        """A socket whose send is interrupted by the stop signal's handler."""

        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def send(self, data: bytes) -> int:
            cli._raise_stop(15, None)
            return 0

        def __getattr__(self, name: str):
            return getattr(self.sock, name)

    async def write_when_the_signal_lands() -> None:
        left, right = socket.socketpair()
        try:
            _, writer = await asyncio.open_connection(sock=left)
            writer.transport._sock = Interrupted(left)  # type: ignore[attr-defined]
            writer.write(b"response")
            await asyncio.sleep(0.05)
        finally:
            right.close()

    with pytest.raises(cli._Stop):
        asyncio.run(write_when_the_signal_lands())
