"""Every error feedback-loop raises on purpose derives from :class:`FeedbackLoopError`.

Messages say what went wrong and what to do next, so the CLI can print them as one line.
"""

from __future__ import annotations


class FeedbackLoopError(Exception):
    """Base class of all feedback-loop errors."""


class ConfigurationError(FeedbackLoopError):
    """A setting or a command-line flag has a value that cannot work."""


class InvalidEventError(FeedbackLoopError):
    """A message could not be decoded or validated against its event schema.

    ``reason`` names the offending field and what is wrong with it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RuntimeStartError(FeedbackLoopError):
    """An embedded server (broker or Redis) or a worker did not start in time."""


class BrokerUnavailableError(FeedbackLoopError):
    """The Kafka bootstrap address did not answer."""


class StoreUnavailableError(FeedbackLoopError):
    """Redis did not answer."""


class OwnershipLostError(FeedbackLoopError):
    """Another worker took over a partition while this one was checkpointing it."""


class CheckpointIntegrityError(FeedbackLoopError):
    """A stored checkpoint is unsigned, tampered with, or was written by other library versions."""


class ReviewConflictError(FeedbackLoopError):
    """A prediction already has a reviewer's verdict: the review queue keeps one verdict per item.

    ``prediction_id`` and ``reviewer`` (who reviewed it first) are attributes; ``existing`` is the
    stored verdict record.
    """

    def __init__(self, prediction_id: str, reviewer: str, existing: dict | None = None) -> None:
        super().__init__(
            f"prediction {prediction_id!r} was already reviewed by {reviewer!r}; one verdict per "
            "item is kept, so this one was not recorded")
        self.prediction_id = prediction_id
        self.reviewer = reviewer
        self.existing = dict(existing or {})
