"""Packing of monitor observations: the cuts against a value-by-value reference."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.observations import chunks, pack_by_partition
from streams.partition import Emit


def reference_chunks(values: list[bytes], max_count: int, max_bytes: int) -> list[tuple[int, int]]:
    """Value by value: a value joins the open message while the count and the bytes allow."""
    out, start, size = [], 0, 0
    for i, value in enumerate(values):
        if i > start and (i - start >= max_count or size + len(value) > max_bytes):
            out.append((start, i))
            start, size = i, 0
        size += len(value) + 1
    if values:
        out.append((start, len(values)))
    return out


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=60),
       st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=120))
def test_chunks_cut_where_the_reference_does(lengths, max_count, max_bytes):
    values = [b"x" * n for n in lengths]
    assert chunks(values, max_count, max_bytes) == reference_chunks(values, max_count, max_bytes)


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=3), st.sampled_from([b"a", b"b"]),
                          st.booleans(), st.binary(min_size=1, max_size=5)), max_size=40))
def test_packed_messages_carry_every_observation_once_with_its_partitions(items):
    emitted = [(p, Emit("monitor-input" if obs else "outcomes", key, value)) for p, key, obs, value in items]
    out = pack_by_partition(emitted)
    assert [e for ps, e in out if e.kind == "outcomes"] == [e for _, e in emitted if e.kind == "outcomes"]
    for key in (b"a", b"b"):
        mine = [(p, e.value) for p, e in emitted if e.kind == "monitor-input" and e.key == key]
        packed = [(ps, e.value) for ps, e in out if e.kind == "monitor-input" and e.key == key]
        assert b",".join(v[1:-1] for _, v in packed) == b",".join(v for _, v in mine)
        assert set().union(*(ps for ps, _ in packed)) == {p for p, _ in mine}
