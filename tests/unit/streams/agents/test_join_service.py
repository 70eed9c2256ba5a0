"""The join service's pure helpers."""

from __future__ import annotations

import heapq
from collections import namedtuple

from hypothesis import given
from hypothesis import strategies as st

from streams.agents.join import produced_order

Message = namedtuple("Message", "run index timestamp")


@given(st.lists(st.lists(st.integers(min_value=0, max_value=20), max_size=12), max_size=6),
       st.booleans())
def test_produced_order_is_the_timestamp_merge_of_the_runs(times, in_order):
    """Whether or not each run's timestamps are in order, the result is heapq.merge's."""
    runs = [[Message(r, i, t) for i, t in enumerate(sorted(run) if in_order else run)]
            for r, run in enumerate(times)]
    expected = list(heapq.merge(*runs, key=lambda m: m.timestamp))
    assert produced_order(runs) == expected
