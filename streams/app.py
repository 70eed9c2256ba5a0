"""The Faust application, and nothing else: topics, agents and services are wired in
:mod:`streams.worker`."""

from __future__ import annotations

import faust

from feedback_loop.settings import Settings


def create_app(settings: Settings) -> faust.App:
    """A Faust app for ``settings``, at-least-once (Tansu has no transactions)."""
    datadir = settings.data_dir / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee="at_least_once",
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        web_enabled=False,
        autodiscover=False,
        loghandlers=[],
    )
