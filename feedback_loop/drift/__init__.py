"""Drift detection and performance estimation before labels (pure logic, no I/O)."""

from __future__ import annotations

# data drift per feature (calibrated thresholds): data.py, result.py, reference.py, statistics.py,
# calibration.py, bootstrap.py, ks_exact.py
from feedback_loop.drift.calibration import calibrate
from feedback_loop.drift.data import FeatureDriftMonitor
from feedback_loop.drift.reference import FeatureReference
from feedback_loop.drift.result import DriftResult
from feedback_loop.drift.statistics import CATEGORICAL_TESTS, NUMERIC_TESTS

__all__ = [
    "CATEGORICAL_TESTS",
    "NUMERIC_TESTS",
    "DriftResult",
    "FeatureDriftMonitor",
    "FeatureReference",
    "calibrate",
]
