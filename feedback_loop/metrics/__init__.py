"""Pure metric math of the feedback loop (no I/O).

* :class:`Sample` / :func:`make_sample` -- one outcome's contribution.
* :class:`QuantileSketch` -- mergeable, subtractable relative-error quantiles.
* :class:`Accumulator` -- cumulative metrics as counts and sums.
* :class:`RollingWindow` -- the most recent outcomes, with exact metrics.

Examples
--------
>>> from feedback_loop.metrics import Accumulator, RollingWindow, make_sample
>>> s = make_sample("p1", 1.0, "cat", "cat", True, {"cat": 0.9, "dog": 0.1}, 3.0)
>>> acc, win = Accumulator(), RollingWindow(100)
>>> acc.add(s)
>>> win.upsert(s)
>>> acc.result()["accuracy"], win.result()["label_delay_p95"]
(1.0, 3.0)
>>> tuple(acc.result()) == METRIC_FIELDS == tuple(win.result())
True

"""

from __future__ import annotations

from feedback_loop.metrics.accumulator import EPS, METRIC_FIELDS, Accumulator
from feedback_loop.metrics.sample import Sample, make_sample
from feedback_loop.metrics.sketch import QuantileSketch
from feedback_loop.metrics.window import RollingWindow

__all__ = [
    "EPS",
    "METRIC_FIELDS",
    "Accumulator",
    "QuantileSketch",
    "RollingWindow",
    "Sample",
    "make_sample",
]
