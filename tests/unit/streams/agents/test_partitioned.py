"""The monitor agent's cooperative apply: the same messages and state as ``apply_all``, and the
event loop handed back between records."""

from __future__ import annotations

import asyncio
import pickle
import random

from online_models.learner import LearnerConfig
from online_models.specs import BUILTIN
from streams.agents.partitioned import apply_cooperatively
from streams.monitor import MonitorConfig
from streams.monitor_state import MonitorPartition
from streams.observations import outcome_observation, pack, prediction_observation
from streams.partition import Emit, Record

T0 = 1_700_000_000.0


def config() -> MonitorConfig:
    return MonitorConfig(resolve_samples=50, reference_size=100, window_size=50, estimate_window=100)


def partition() -> MonitorPartition:
    learning = {"m": LearnerConfig(challengers=(("lr", BUILTIN["logreg"]),), checkpoint_updates=40,
                                   checkpoint_seconds=1e9)}
    return MonitorPartition(0, config(), "e", learning=learning)


def records(n: int, seed: int) -> list[Record]:
    """Packed records of predictions of two models and of their outcomes, the drift of ``x``
    halfway (so alerts fire), with the learner's checkpoints due along the way."""
    rng = random.Random(seed)
    out, observations = [], []
    for i in range(n):
        model = "m" if i % 3 else "other"
        x = rng.gauss(0.0 if i < n // 2 else 3.0, 1.0)
        y = "a" if rng.random() < 0.7 else "b"
        label = y if rng.random() < 0.8 else ("b" if y == "a" else "a")
        observations.append(prediction_observation(f"p{i}", model, "1", T0 + i, {"x": x}, y,
                                                   rng.uniform(0.5, 1.0)))
        observations.append(outcome_observation(f"p{i}", model, "1", T0 + i, T0 + i + 0.5, label == y,
                                                0.9, 1, label, "label", {"x": x}, y, None, True))
    for start in range(0, len(observations), 37):  # records of a few dozen observations, like a live batch
        for message in pack([Emit("monitor-input", key, value) for key, value in observations[start:start + 37]]):
            out.append(Record("monitor-input", 0, len(out), message.key, message.value))
    return out


def test_applying_cooperatively_equals_apply_all() -> None:
    batch = records(600, seed=3)
    direct, cooperative = partition(), partition()
    expected = direct.apply_all(batch, T0 + 1e6)
    got = asyncio.run(apply_cooperatively(cooperative, batch, T0 + 1e6, slice_seconds=0.0))
    assert any(e.kind == "drift-alerts" for e in expected) and any(e.kind == "model-updates" for e in expected)
    assert got == expected
    assert pickle.dumps(cooperative.monitors) == pickle.dumps(direct.monitors)
    assert cooperative.registry_saves and pickle.dumps(cooperative.registry_saves) == pickle.dumps(direct.registry_saves)


def test_the_loop_runs_other_tasks_between_records() -> None:
    batch = records(200, seed=4)

    async def main() -> tuple[list[int], int]:
        seen: list[int] = []
        state = partition()
        applied = {"n": 0}
        apply = state.apply

        def counting(record: Record):
            applied["n"] += 1
            return apply(record)

        state.apply = counting  # type: ignore[method-assign]

        async def other() -> None:
            while applied["n"] < len(batch):
                seen.append(applied["n"])
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        await apply_cooperatively(state, batch, T0, slice_seconds=0.0)
        await task
        return seen, applied["n"]

    seen, total = asyncio.run(main())
    assert total == len(batch)
    # the other task saw the apply after every record, not only before and after the batch
    assert set(range(1, len(batch))) <= set(seen)
