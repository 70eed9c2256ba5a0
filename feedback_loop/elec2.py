"""The Elec2 stream (New South Wales electricity market, 1996-1998: 45,312 half-hours with real
concept drift; the class says whether the price went UP or DOWN), shipped with the package."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Iterator

#: The columns used as features. ``date`` is left out: it is the time axis (a normalised day
#: count), and a frozen model that learned it extrapolates badly (46.8% instead of 74.8%).
FEATURES = ("day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")
START = datetime(1996, 5, 7, tzinfo=timezone.utc)
STEP = timedelta(minutes=30)


def rows() -> Iterator[tuple[dict[str, float], str]]:
    """``(features, class)`` per half-hour, in stream order.

    >>> x, y = next(rows())
    >>> sorted(x) == sorted(FEATURES), y
    (True, 'UP')
    """
    path = resources.files("feedback_loop") / "data" / "electricity.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            yield {k: float(row[k]) for k in FEATURES}, row["class"]


def timestamp(index: int) -> datetime:
    """Event time of row ``index``: one row every 30 minutes from 7 May 1996."""
    return START + index * STEP
