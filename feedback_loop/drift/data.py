"""Data drift per feature, against a reference window, with calibrated thresholds.

:class:`FeatureDriftMonitor` takes rows (``{feature: value}``) one at a time:

1. The first ``reference_size`` rows are the reference (or a pinned reference,
   :meth:`FeatureDriftMonitor.with_reference`). When it is complete, every
   feature seen in it becomes a monitored feature, numeric when all its
   reference values are numbers (``bool`` is categorical) and categorical
   otherwise, and the thresholds of every (feature, test) pair are calibrated
   once (:mod:`feedback_loop.drift.calibration`), with the per-window
   false-alarm rate split over the pairs (Bonferroni).
2. Later rows fill tumbling windows of ``window_size`` rows. When one closes,
   :meth:`FeatureDriftMonitor.update` returns one
   :class:`~feedback_loop.drift.result.DriftResult` per (feature, configured
   test); the feature's other statistics come along in ``extra``.

Missing values (key absent or ``None``, NaN, infinities, and non-numbers in a
numeric feature) are skipped for that feature only; a window in which a
feature has fewer than :data:`MIN_COUNT` values reports nothing for it, and
one with fewer values than ``window_size`` is judged against thresholds
calibrated for its actual count (computed on demand with a seed derived from
the feature and the count, so a restarted worker gets the same ones).
Features that appear only after the reference are ignored, and the reference
stays as it is (a drifted feature keeps alarming until the caller replaces the
monitor). ``update`` costs ``O(features)`` per row (appends); statistics are
computed only when a window closes; the calibration, once per reference, costs
tens of milliseconds per feature at the default sizes.

The same monitor watches prediction drift (the predicted class, a categorical
"feature") and confidence drift (a numeric one): see the example.

"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from feedback_loop.drift.calibration import bonferroni
from feedback_loop.drift.reference import FeatureReference, Kind, category_key
from feedback_loop.drift.result import DriftResult
from feedback_loop.drift.statistics import CATEGORICAL_TESTS, NUMERIC_TESTS
from feedback_loop.errors import ConfigurationError

__all__ = ["MIN_COUNT", "FeatureDriftMonitor"]

#: Fewest values of a feature for it to be monitored (reference) or judged (window).
MIN_COUNT = 10

_STATE_VERSION = 1
_MAX_EXTRA_THRESHOLDS = 256
_INT64 = 1 << 63



#: Share of the configured false-alarm rate the thresholds aim at. The resampled no-drift
#: distributions are estimates: aiming 10% below leaves room for their error, so that the rate
#: measured on unchanged data stays under the configured one instead of hovering around it.
SAFETY = 0.9

def _reference_value(v: Any) -> float | int | str | None:
    """A reference value as kept: a finite number, or a category's text; ``None`` if missing."""
    t = type(v)
    if t is float:
        return v if math.isfinite(v) else None
    if t is int:
        return v if -_INT64 <= v < _INT64 else float(v)
    if t is str:
        return v
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        f = float(v)
        return f if math.isfinite(f) else None
    return category_key(v)


def _number(v: Any) -> float | None:
    """A numeric feature's window value as a float, or ``None`` when it is not a finite number."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        f = float(v)
        if math.isfinite(f):
            return f
    return None


def _check_tests(name: str, tests: Sequence[str], known: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(tests, str):
        tests = (tests,)
    out = tuple(tests)
    for t in out:
        if t not in known:
            raise ConfigurationError(f"{name}: unknown test {t!r} (choose from {', '.join(known)})")
    if len(set(out)) != len(out):
        raise ConfigurationError(f"{name}: a test is listed twice: {out}")
    return out


class FeatureDriftMonitor:
    """Per-feature data drift on tumbling windows, thresholds calibrated on the reference.

    Parameters
    ----------
    reference_size
        Rows of the reference, ``>= window_size``.
    window_size
        Rows per tumbling window, ``>= 10``.
    false_alarm_rate
        Target probability, in ``(0, 0.5)``, that a window of unchanged data
        raises at least one alarm (any feature, any test).
    numeric_tests, categorical_tests
        Tests that decide ``drifted`` for numeric and categorical features
        (names from :data:`~feedback_loop.drift.statistics.NUMERIC_TESTS` and
        :data:`~feedback_loop.drift.statistics.CATEGORICAL_TESTS`; at least one
        test overall).
    bootstrap
        Minimum number of bootstrap replicates per calibration (raised as
        needed, see :func:`~feedback_loop.drift.calibration.resamples_for`).
    seed
        Seed of the calibration's random draws (``>= 0``).
    features
        Only these features are monitored; default: every feature of the
        reference.
    categorical_features
        Features treated as categorical even when their values are numbers
        (e.g. integer codes, or an integer predicted class).

    Raises
    ------
    ConfigurationError
        When a setting cannot work; the message starts with its name.

    Examples
    --------
    Prediction drift (predicted class, categorical) and confidence drift
    (numeric), with a shift after the reference:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> def row(p_yes, conf):
    ...     return {"prediction": "yes" if rng.random() < p_yes else "no", "confidence": rng.beta(*conf)}
    >>> mon = FeatureDriftMonitor(reference_size=400, window_size=200, false_alarm_rate=0.01)
    >>> out = [mon.update(row(0.3, (8, 2))) for _ in range(400)]
    >>> mon.features
    {'confidence': 'numeric', 'prediction': 'categorical'}
    >>> round(mon.alpha, 6)  # per (feature, test): 0.9 * 0.01 / 2 pairs
    0.0045
    >>> results = [r for _ in range(200) for r in mon.update(row(0.3, (8, 2)))]  # unchanged
    >>> [(r.feature, r.test, r.drifted, r.window_index) for r in results]
    [('confidence', 'ks', False, 0), ('prediction', 'chi2', False, 0)]
    >>> results = [r for _ in range(200) for r in mon.update(row(0.6, (4, 2)))]  # drifted
    >>> [(r.feature, r.test, r.drifted) for r in results]
    [('confidence', 'ks', True), ('prediction', 'chi2', True)]
    >>> sorted(results[0].extra)  # reported, not used for alerting
    ['psi', 'wasserstein']
    >>> import orjson
    >>> FeatureDriftMonitor.from_dict(orjson.loads(orjson.dumps(mon.to_dict()))).to_dict() == mon.to_dict()
    True

    """

    __slots__ = (
        "_alpha",
        "_buffers",
        "_extra_thresholds",
        "_memo",
        "_reference_rows",
        "_references",
        "_slots",
        "_thresholds",
        "_window_index",
        "_window_rows",
        "bootstrap",
        "categorical_features",
        "categorical_tests",
        "false_alarm_rate",
        "feature_filter",
        "numeric_tests",
        "reference_size",
        "seed",
        "window_size",
    )

    def __init__(
        self,
        reference_size: int = 1000,
        window_size: int = 500,
        false_alarm_rate: float = 0.01,
        numeric_tests: Sequence[str] = ("ks",),
        categorical_tests: Sequence[str] = ("chi2",),
        bootstrap: int = 200,
        seed: int = 0,
        features: Sequence[str] | None = None,
        categorical_features: Collection[str] = (),
    ) -> None:
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < MIN_COUNT:
            raise ConfigurationError(f"window_size must be an integer >= {MIN_COUNT}, got {window_size!r}")
        if isinstance(reference_size, bool) or not isinstance(reference_size, int) or reference_size < window_size:
            raise ConfigurationError(
                f"reference_size must be an integer >= window_size ({window_size}), got {reference_size!r}"
            )
        if (
            isinstance(false_alarm_rate, bool)
            or not isinstance(false_alarm_rate, (int, float))
            or not (0.0 < false_alarm_rate < 0.5)
        ):
            raise ConfigurationError(f"false_alarm_rate must be in (0, 0.5), got {false_alarm_rate!r}")
        self.numeric_tests = _check_tests("numeric_tests", numeric_tests, NUMERIC_TESTS)
        self.categorical_tests = _check_tests("categorical_tests", categorical_tests, CATEGORICAL_TESTS)
        if not self.numeric_tests and not self.categorical_tests:
            raise ConfigurationError("numeric_tests and categorical_tests are both empty: nothing to test")
        if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 1:
            raise ConfigurationError(f"bootstrap must be an integer >= 1, got {bootstrap!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigurationError(f"seed must be an integer >= 0, got {seed!r}")
        if isinstance(features, str) or (features is not None and not all(isinstance(f, str) for f in features)):
            raise ConfigurationError(f"features must be a list of feature names, got {features!r}")
        if isinstance(categorical_features, str) or not all(isinstance(f, str) for f in categorical_features):
            raise ConfigurationError(
                f"categorical_features must be a list of feature names, got {categorical_features!r}"
            )
        self.reference_size = reference_size
        self.window_size = window_size
        self.false_alarm_rate = float(false_alarm_rate)
        self.bootstrap = bootstrap
        self.seed = seed
        self.feature_filter: tuple[str, ...] | None = None if features is None else tuple(dict.fromkeys(features))
        self.categorical_features = frozenset(categorical_features)
        self._buffers: dict[str, list[Any]] = {}
        self._reference_rows = 0
        self._references: dict[str, FeatureReference] | None = None
        self._thresholds: dict[str, dict[str, float]] = {}
        self._alpha = self.false_alarm_rate
        self._slots: list[tuple[str, list[Any], bool]] = []
        self._window_rows = 0
        self._window_index = 0
        self._memo: dict[tuple[int, int, float], float] = {}
        self._extra_thresholds: dict[tuple[str, int], dict[str, float]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def with_reference(
        cls,
        rows: Iterable[Mapping[str, Any]],
        *,
        window_size: int = 500,
        false_alarm_rate: float = 0.01,
        numeric_tests: Sequence[str] = ("ks",),
        categorical_tests: Sequence[str] = ("chi2",),
        bootstrap: int = 200,
        seed: int = 0,
        features: Sequence[str] | None = None,
        categorical_features: Collection[str] = (),
    ) -> FeatureDriftMonitor:
        """A monitor whose reference is ``rows`` (pinned), calibrated and ready for windows.

        ``reference_size`` is ``len(rows)``, which must be ``>= window_size``.

        Examples
        --------
        >>> rows = [{"x": float(i % 17), "c": "ab"[i % 2]} for i in range(100)]
        >>> mon = FeatureDriftMonitor.with_reference(rows, window_size=50)
        >>> mon.reference_ready, mon.reference_size, mon.features
        (True, 100, {'c': 'categorical', 'x': 'numeric'})

        """
        rows = list(rows)
        mon = cls(
            reference_size=len(rows),
            window_size=window_size,
            false_alarm_rate=false_alarm_rate,
            numeric_tests=numeric_tests,
            categorical_tests=categorical_tests,
            bootstrap=bootstrap,
            seed=seed,
            features=features,
            categorical_features=categorical_features,
        )
        for x in rows:
            mon.update(x)
        return mon

    # ------------------------------------------------------------------ properties

    @property
    def reference_ready(self) -> bool:
        """Whether the reference is complete and calibrated."""
        return self._references is not None

    @property
    def features(self) -> dict[str, Kind]:
        """Monitored features and their kind (empty until the reference is complete)."""
        return {name: ref.kind for name, ref in (self._references or {}).items()}

    @property
    def alpha(self) -> float:
        """False-alarm level of each (feature, test) pair."""
        return self._alpha

    @property
    def thresholds(self) -> dict[str, dict[str, float]]:
        """Calibrated thresholds ``{feature: {test: threshold}}`` for full windows."""
        return {name: dict(th) for name, th in self._thresholds.items()}

    @property
    def references(self) -> dict[str, FeatureReference]:
        """Reference of each monitored feature."""
        return dict(self._references or {})

    @property
    def window_index(self) -> int:
        """Number of windows closed so far (the index of the open one)."""
        return self._window_index

    @property
    def rows_in_window(self) -> int:
        """Rows in the open window (or in the reference, while it fills)."""
        return self._window_rows if self._references is not None else self._reference_rows

    def tests_for(self, kind: Kind) -> tuple[str, ...]:
        """Configured tests of a kind of feature."""
        return self.numeric_tests if kind == "numeric" else self.categorical_tests

    def __repr__(self) -> str:
        return (
            f"FeatureDriftMonitor(reference_size={self.reference_size}, window_size={self.window_size}, "
            f"false_alarm_rate={self.false_alarm_rate}, features={len(self.features)}, "
            f"window_index={self._window_index})"
        )

    # ------------------------------------------------------------------ updates

    def update(self, x: Mapping[str, Any]) -> list[DriftResult]:
        """Add one row; returns the results of the window it closes, else ``[]``."""
        closed = self.update_many((x,))
        return closed[0][1] if closed else []

    def update_many(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, list[DriftResult]]]:
        """Add the rows in turn, in one pass per feature and window (missing and non-finite values
        of a numeric feature are skipped, categories are canonical text).

        Returns ``(index, results)`` for each row that closed a window (``index`` into ``rows``).

        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> rows = [{"x": float(v), "c": "ab"[i % 2]} for i, v in enumerate(rng.normal(size=250))]
        >>> one, many = FeatureDriftMonitor(100, 50), FeatureDriftMonitor(100, 50)
        >>> singly = [(i, r) for i, x in enumerate(rows) if (r := one.update(x))]
        >>> many.update_many(rows) == singly and one.to_dict() == many.to_dict()
        True
        >>> [i for i, _ in singly]
        [149, 199, 249]
        """
        out: list[tuple[int, list[DriftResult]]] = []
        start, n = 0, len(rows)
        while start < n and self._references is None:  # the reference fills row by row
            self._add_reference_row(rows[start])
            start += 1
            if self._reference_rows >= self.reference_size:
                self._finish_reference()
        while start < n:
            end = min(n, start + max(1, self.window_size - self._window_rows))
            chunk = rows[start:end] if start or end < n else rows
            for name, buf, numeric in self._slots:
                values = [x.get(name) for x in chunk]
                if numeric:
                    for v in values:
                        if type(v) is float:
                            if v - v == 0.0:  # not NaN nor infinite
                                buf.append(v)
                        elif type(v) is int and -_INT64 <= v < _INT64:
                            buf.append(float(v))
                        elif v is not None:
                            v = _number(v)
                            if v is not None:
                                buf.append(v)
                else:
                    buf.extend([v if type(v) is str else category_key(v) for v in values if v is not None])
            self._window_rows += end - start
            if self._window_rows >= self.window_size:
                out.append((end - 1, self._close_window()))
            start = end
        return out

    def _add_reference_row(self, x: Mapping[str, Any]) -> None:
        buffers = self._buffers
        names: Iterable[str] = x if self.feature_filter is None else self.feature_filter
        for name in names:
            v = x.get(name)
            if v is None or type(name) is not str:
                continue
            v = _reference_value(v)
            if v is None:
                continue
            buf = buffers.get(name)
            if buf is None:
                buf = buffers[name] = []
            buf.append(v)
        self._reference_rows += 1

    def _finish_reference(self) -> None:
        refs: dict[str, FeatureReference] = {}
        for name in sorted(self._buffers):
            values = self._buffers[name]
            categorical = name in self.categorical_features or any(type(v) is str for v in values)
            kind: Kind = "categorical" if categorical else "numeric"
            if len(values) < MIN_COUNT or not self.tests_for(kind):
                continue
            refs[name] = FeatureReference(kind, values)
        pairs = sum(len(self.tests_for(ref.kind)) for ref in refs.values())
        budget = SAFETY * self.false_alarm_rate
        self._alpha = bonferroni(budget, pairs) if pairs else budget
        self._thresholds = {name: self._calibrate(name, ref, self.window_size) for name, ref in refs.items()}
        self._references = refs
        self._buffers = {}
        self._open_window({})

    def _open_window(self, values: Mapping[str, list[Any]]) -> None:
        self._slots = [
            (name, list(values.get(name, ())), ref.kind == "numeric") for name, ref in (self._references or {}).items()
        ]

    def _calibrate(self, name: str, ref: FeatureReference, count: int) -> dict[str, float]:
        rng = [self.seed, zlib.crc32(name.encode("utf-8")), count]
        return ref.calibrate(count, self.tests_for(ref.kind), self._alpha, self.bootstrap, rng, self._memo)

    def _thresholds_for(self, name: str, ref: FeatureReference, count: int) -> dict[str, float]:
        if count == self.window_size:
            return self._thresholds[name]
        key = (name, count)
        th = self._extra_thresholds.get(key)
        if th is None:
            if len(self._extra_thresholds) >= _MAX_EXTRA_THRESHOLDS:
                self._extra_thresholds.clear()
            th = self._extra_thresholds[key] = self._calibrate(name, ref, count)
        return th

    def _close_window(self) -> list[DriftResult]:
        refs = self._references or {}
        results: list[DriftResult] = []
        index = self._window_index
        for name, buf, _ in self._slots:
            count = len(buf)
            if count >= MIN_COUNT:
                ref = refs[name]
                stats = ref.score(buf)
                th = self._thresholds_for(name, ref, count)
                for test in self.tests_for(ref.kind):
                    s = stats[test]
                    results.append(
                        DriftResult(
                            feature=name,
                            test=test,
                            statistic=s,
                            threshold=th[test],
                            drifted=s > th[test],
                            reference_size=ref.size,
                            window_size=count,
                            window_index=index,
                            alpha=self._alpha,
                            extra={k: v for k, v in stats.items() if k != test},
                        )
                    )
            buf.clear()
        self._window_rows = 0
        self._window_index += 1
        return results

    # ------------------------------------------------------------------ state

    def settings(self) -> dict[str, Any]:
        """Constructor arguments, JSON-able."""
        return {
            "reference_size": self.reference_size,
            "window_size": self.window_size,
            "false_alarm_rate": self.false_alarm_rate,
            "numeric_tests": list(self.numeric_tests),
            "categorical_tests": list(self.categorical_tests),
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "features": None if self.feature_filter is None else list(self.feature_filter),
            "categorical_features": sorted(self.categorical_features),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able full state (round-trips through orjson); :meth:`from_dict` resumes exactly."""
        refs = self._references
        return {
            "version": _STATE_VERSION,
            "settings": self.settings(),
            "reference_rows": self._reference_rows,
            "reference_buffers": {name: list(buf) for name, buf in self._buffers.items()},
            "references": None if refs is None else {name: ref.to_dict() for name, ref in refs.items()},
            "alpha": self._alpha,
            "thresholds": self.thresholds,
            "window": {name: list(buf) for name, buf, _ in self._slots},
            "window_rows": self._window_rows,
            "window_index": self._window_index,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureDriftMonitor:
        """Rebuild a monitor from :meth:`to_dict` output.

        Raises
        ------
        ConfigurationError
            If the state was written by another version or has bad settings.

        """
        if data.get("version") != _STATE_VERSION:
            raise ConfigurationError(f"state version must be {_STATE_VERSION}, got {data.get('version')!r}")
        mon = cls(**data["settings"])
        mon._reference_rows = int(data["reference_rows"])
        mon._buffers = {str(k): list(v) for k, v in data["reference_buffers"].items()}
        if data["references"] is not None:
            mon._references = {str(k): FeatureReference.from_dict(v) for k, v in data["references"].items()}
            mon._alpha = float(data["alpha"])
            mon._thresholds = {str(k): {t: float(x) for t, x in th.items()} for k, th in data["thresholds"].items()}
            mon._open_window(data["window"])
        mon._window_rows = int(data["window_rows"])
        mon._window_index = int(data["window_index"])
        return mon
