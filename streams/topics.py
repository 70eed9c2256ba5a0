"""The topics the workers read and write. Values and keys stay raw bytes: agents decode them
themselves, so a bad message becomes a dead letter instead of ending the stream."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from feedback_loop.settings import Settings

_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


@dataclass(frozen=True)
class StreamTopics:
    """Faust handles of the topics used by the agents."""

    join_sources: faust.TopicT
    outcomes: faust.TopicT
    metrics: faust.TopicT
    dead_letters: faust.TopicT
    monitor_input: faust.TopicT
    drift_alerts: faust.TopicT
    review_queue: faust.TopicT
    model_updates: faust.TopicT

    def name_of(self, kind: str) -> str:
        """The topic name of an emitted message kind (a contract topic name)."""
        return {"outcomes": self.outcomes, "dead-letters": self.dead_letters,
                "monitor-input": self.monitor_input, "drift-alerts": self.drift_alerts,
                "review-queue": self.review_queue, "model-updates": self.model_updates}[kind].get_topic_name()


def declare(app: faust.App, settings: Settings) -> StreamTopics:
    """Declare the topics on ``app``; they are created beforehand, see ``kafka_admin.ensure_topics``."""
    t = settings.topics
    return StreamTopics(
        join_sources=app.topic(t.predictions, t.labels, t.review_flags, **_RAW),
        outcomes=app.topic(t.outcomes, **_RAW),
        metrics=app.topic(t.metrics, **_RAW),
        dead_letters=app.topic(t.dead_letters, **_RAW),
        monitor_input=app.topic(t.monitor_input, **_RAW),
        drift_alerts=app.topic(t.drift_alerts, **_RAW),
        review_queue=app.topic(t.review_queue, **_RAW),
        model_updates=app.topic(t.model_updates, **_RAW),
    )
