"""The Faust application, and nothing else: topics, agents and services are wired in
:mod:`streams.worker`.

One change to Faust's Kafka driver: Faust creates its aiokafka consumer with a fixed
``fetch_max_wait_ms=1500``: the embedded broker, which looks for new data again only after half
of a fetch's wait, then held the first message after a quiet moment for up to 750 ms (Apache
Kafka answers at once). :class:`App` sets ``broker_fetch_max_wait_ms`` from the settings instead.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver

from feedback_loop.kafka_security import faust_credentials
from feedback_loop.settings import Settings


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it starts its fetcher (consumer.start()).
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer = _Consumer


class App(faust.App):
    """``faust.App`` whose consumer waits at most ``fetch_max_wait_ms`` for data at the broker."""

    fetch_max_wait_ms = 1500

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> faust.App:
    """A Faust app for ``settings``, at-least-once (Tansu has no transactions).

    ``broker_credentials`` carry the SASL/TLS settings (``None``, Faust's default, for PLAINTEXT);
    Faust passes them to every aiokafka client it creates.
    """
    datadir = settings.data_dir / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
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
        # Faust reads only monitor-input, whose records pack up to 500 observations (256 KB):
        # the default 4,096 buffered records per partition could hold a gigabyte
        stream_buffer_maxsize=64,
        web_enabled=False,
        autodiscover=False,
        loghandlers=[],
    )
    app.fetch_max_wait_ms = settings.broker_fetch_max_wait_ms
    return app
