"""Drift detection and performance estimation before labels (pure logic, no I/O)."""
