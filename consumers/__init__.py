"""Consumers of the loop's output topics.

``consumers.alerts`` (with ``consumers.sinks``): drift alerts from ``drift-alerts`` to a terminal,
a webhook or a Redis list, each delivered once per sink, undeliverable ones parked in Redis.
"""
