"""The join service's pure helpers."""

from __future__ import annotations

import heapq
from collections import namedtuple

from hypothesis import given
from hypothesis import strategies as st

from streams.agents.join import produced_batches, produced_order

Message = namedtuple("Message", "run index timestamp")


@given(st.lists(st.lists(st.integers(min_value=0, max_value=20), max_size=12), max_size=6),
       st.booleans())
def test_produced_order_is_the_timestamp_merge_of_the_runs(times, in_order):
    """Whether or not each run's timestamps are in order, the result is heapq.merge's."""
    runs = [[Message(r, i, t) for i, t in enumerate(sorted(run) if in_order else run)]
            for r, run in enumerate(times)]
    expected = list(heapq.merge(*runs, key=lambda m: m.timestamp))
    assert produced_order(runs) == expected


@given(st.lists(st.lists(st.integers(min_value=0, max_value=20), max_size=12), max_size=6),
       st.booleans(), st.integers(1, 30))
def test_produced_batches_cut_the_produced_order_into_bounded_batches(times, in_order, size):
    """Read one after the other, the batches are the fetch in produced order; each holds at most
    ``size`` records, per topic partition in offset order, and its own produced order is its
    share of the fetch's."""
    fetched = {f"tp{r}": [Message(r, i, t) for i, t in enumerate(sorted(run) if in_order else run)]
               for r, run in enumerate(times) if run}
    batches = produced_batches(fetched, size)
    whole = produced_order(list(fetched.values()))
    flat = [m for batch in batches for m in produced_order(list(batch.values()))]
    assert flat == whole
    for batch in batches:
        assert 0 < sum(map(len, batch.values())) <= size
        for tp, messages in batch.items():
            assert messages and all(m.run == int(tp[2:]) for m in messages)
            assert [m.index for m in messages] == sorted(m.index for m in messages)
    assert sum(len(b) for batch in batches for b in batch.values()) == sum(map(len, fetched.values()))
