"""Serving for producer services: emit predictions and labels, and serve the current champion.

Two independent pieces, both synchronous (kafka-python and redis-py, no event loop):

:class:`PredictionClient`
    Emits :class:`~feedback_loop.events.PredictionEvent` and :class:`~feedback_loop.events.LabelEvent`
    with the contract's fields (``DESIGN.md``) to the ``predictions`` and ``labels`` topics, keyed by
    ``prediction_id`` so predictions, labels and review flags stay co-partitioned. Every event is
    validated before anything is sent; sends are asynchronous (batched for ``linger_ms``) and
    :meth:`PredictionClient.flush` waits for them and reports any that failed.

:class:`ModelHandle`
    Holds the current champion of one model, loaded from the
    :class:`~online_models.registry.ModelRegistry`, and predicts locally. The served model and its
    version are **one tuple attribute** replaced in a single assignment: each prediction reads it
    once, so a concurrent swap never mixes two models and never blocks or drops a request (loading
    happens beside the served model, which stays in use until the new one is ready).
    :meth:`ModelHandle.follow` starts a daemon thread that reads ``model-updates`` and reloads on a
    promotion, a rollback or a registration, and takes a fresher checkpoint of the champion's spec.

Errors
------
:class:`~feedback_loop.errors.ConfigurationError`
    No Kafka bootstrap address in the settings; the ``model-updates`` topic does not exist.
:class:`~feedback_loop.errors.BrokerUnavailableError`
    Kafka did not answer, did not accept an event in time, or failed to deliver one (reported by
    :meth:`PredictionClient.flush`).
:class:`~feedback_loop.errors.InvalidEventError`
    A prediction or label does not satisfy the contract; ``reason`` names the field and nothing is
    sent.
:class:`~feedback_loop.errors.StoreUnavailableError`
    Redis did not answer while :meth:`ModelHandle.refresh` read the registry (the follower thread
    logs it, keeps serving and retries instead).
:class:`ModelUnavailableError`
    A prediction was asked for while the handle has nothing to serve: no usable champion and no
    fallback.

A checkpoint that fails verification (:class:`~feedback_loop.errors.CheckpointIntegrityError`) is
never raised to a caller: the handle logs it at ERROR and keeps serving what it has.

Examples
--------
A handle with a fallback answers before any champion exists:

>>> from online_models.baselines import LastLabel
>>> class EmptyRegistry:  # no champion recorded yet
...     def champion(self, model):
...         return None
>>> rules = LastLabel()
>>> rules.learn_one({}, "no")
>>> handle = ModelHandle(EmptyRegistry(), "churn", fallback=rules, fallback_version="rules-1")
>>> handle.predict_one({"age": 42})
('no', 'rules-1')
>>> handle.served
1

Invalid events are refused before anything is sent:

>>> class Unused:  # a producer that must never be called
...     def send(self, *args, **kwargs):
...         raise AssertionError("sent")
>>> client = PredictionClient(Settings(), producer=Unused())
>>> try:
...     client.predict("p-1", "churn", "v1", {"age": 42}, "yes", confidence=1.5)
... except InvalidEventError as exc:
...     print(exc.reason)
confidence: Input should be less than or equal to 1
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, NamedTuple

import kafka.errors as kerrors
import redis as redis_lib
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json

from feedback_loop.errors import (
    BrokerUnavailableError,
    CheckpointIntegrityError,
    ConfigurationError,
    FeedbackLoopError,
    InvalidEventError,
    StoreUnavailableError,
)
from feedback_loop.events import (
    Event,
    LabelEvent,
    ModelUpdate,
    PredictionEvent,
    decode,
    describe_validation_error,
)
from feedback_loop.kafka_security import kafka_python_kwargs
from feedback_loop.settings import Settings

__all__ = ["ModelHandle", "ModelUnavailableError", "PredictionClient"]

log = logging.getLogger(__name__)

#: Actions on ``model-updates`` after which the handle re-reads the champion record.
REFRESH_ACTIONS = frozenset({"promote", "rollback", "register"})


class ModelUnavailableError(FeedbackLoopError):
    """A :class:`ModelHandle` has nothing to serve: no usable champion and no fallback."""


def _check_bootstrap(settings: Settings, what: str) -> str:
    if not settings.kafka_bootstrap:
        raise ConfigurationError(
            f"{what} needs a Kafka bootstrap address: set FEEDBACK_LOOP_KAFKA_BOOTSTRAP=HOST:PORT "
            "(or Settings(kafka_bootstrap=...))")
    return settings.kafka_bootstrap


def _unavailable(bootstrap: str, exc: BaseException | str) -> BrokerUnavailableError:
    return BrokerUnavailableError(
        f"Kafka at {bootstrap} did not answer ({exc}); check FEEDBACK_LOOP_KAFKA_BOOTSTRAP and that "
        "the broker is running and reachable")


# ============================================================================ the client
class PredictionClient:
    """Emits predictions and labels to Kafka with the contract's fields.

    Parameters
    ----------
    settings : Settings
        Gives ``kafka_bootstrap`` and the topic names (``settings.topic("predictions")`` and
        ``settings.topic("labels")``).
    producer : kafka.KafkaProducer, optional
        A producer of your own (it is flushed but not closed by :meth:`close`). By default one is
        created with ``acks="all"`` and ``linger_ms`` as given.
    linger_ms : int, optional
        How long the created producer waits to batch events (default 5 ms).
    timeout : float, optional
        Seconds to wait for the broker when connecting, and for topic metadata or buffer space when
        sending (default 10).

    Raises
    ------
    ConfigurationError
        No producer given and ``settings.kafka_bootstrap`` unset.
    BrokerUnavailableError
        The broker did not answer within ``timeout``.

    Notes
    -----
    Sends are asynchronous: :meth:`predict` and :meth:`label` return once the event is validated
    and queued. A delivery that fails later is logged, counted in ``failed`` and reported by the
    next :meth:`flush` (and :meth:`close`). The client is thread-safe (kafka-python's producer is).
    """

    def __init__(self, settings: Settings, *, producer: Any = None, linger_ms: int = 5,
                 timeout: float = 10.0) -> None:
        self.settings = settings
        self.predictions_topic = settings.topic("predictions")
        self.labels_topic = settings.topic("labels")
        self.timeout = float(timeout)
        self.sent = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._closed = False
        self._own_producer = producer is None
        if producer is None:
            from kafka import KafkaProducer

            bootstrap = _check_bootstrap(settings, "the prediction client")
            timeout_ms = max(int(self.timeout * 1000), 100)
            try:
                producer = KafkaProducer(
                    bootstrap_servers=bootstrap, acks="all", linger_ms=int(linger_ms),
                    client_id="feedback-loop-serving", bootstrap_timeout_ms=timeout_ms,
                    max_block_ms=timeout_ms, request_timeout_ms=max(timeout_ms, 1000),
                    **kafka_python_kwargs(settings))
            except (kerrors.KafkaError, OSError) as exc:
                raise _unavailable(bootstrap, exc) from exc
        self.producer = producer

    # ------------------------------------------------------------------ events
    def predict(
        self, prediction_id: str, model: str, model_version: str, features: Mapping[str, Any],
        prediction: Any, *, scores: Mapping[str, float] | None = None, confidence: float | None = None,
        tags: Mapping[str, str] | None = None, timestamp: datetime | str | None = None,
        challenger: Mapping[str, Any] | None = None,
    ) -> PredictionEvent:
        """Validate and send one prediction to ``predictions``, keyed by ``prediction_id``.

        Parameters
        ----------
        prediction_id, model, model_version : str
            Non-empty identifiers; ``model_version`` is what the handle reported (e.g.
            :attr:`ModelHandle.version`).
        features : mapping
            The model's input, JSON-serialisable.
        prediction : str, int, bool or float
            A class label or a number (regression).
        scores : mapping, optional
            Class -> probability (each in [0, 1]).
        confidence : float, optional
            In [0, 1]; consumers default it to the score of the predicted class.
        tags : mapping, optional
            Segment tags, string -> string.
        timestamp : datetime or str, optional
            When the prediction was made, with a zone (default: now, UTC).
        challenger : mapping, optional
            The shadow challenger's ``{"prediction", "confidence"}``, sent as the extra field
            ``challenger`` as it is.

        Returns
        -------
        PredictionEvent
            The event as sent.

        Raises
        ------
        InvalidEventError
            A field breaks the contract; ``reason`` names it. Nothing is sent.
        BrokerUnavailableError
            The broker did not take the event within ``timeout``.
        """
        fields: dict[str, Any] = {
            "prediction_id": prediction_id, "model": model, "model_version": model_version,
            "timestamp": datetime.now(timezone.utc) if timestamp is None else timestamp,
            "features": features, "prediction": prediction,
        }
        for name, value in (("scores", scores), ("confidence", confidence), ("tags", tags)):
            if value is not None:
                fields[name] = value
        if challenger is not None:
            if not isinstance(challenger, Mapping):
                raise InvalidEventError(
                    f"challenger: expected an object such as {{'prediction': ..., 'confidence': ...}}, "
                    f"got {type(challenger).__name__}")
            fields["challenger"] = dict(challenger)
        event = _validate(PredictionEvent, fields)
        self._send(self.predictions_topic, event.prediction_id, _encode(event, fields))
        return event

    def label(self, prediction_id: str, label: Any, *, timestamp: datetime | str | None = None,
              source: str | None = None) -> LabelEvent:
        """Validate and send the ground truth of a prediction to ``labels``, keyed by ``prediction_id``.

        Parameters
        ----------
        prediction_id : str
            The prediction it labels (it may be sent before or long after the prediction).
        label : str, int, bool or float
            The true class or value.
        timestamp : datetime or str, optional
            When the truth became known, with a zone (default: now, UTC).
        source : str, optional
            Where it came from, e.g. ``"crm-export"``.

        Returns
        -------
        LabelEvent
            The event as sent.

        Raises
        ------
        InvalidEventError
            A field breaks the contract; ``reason`` names it. Nothing is sent.
        BrokerUnavailableError
            The broker did not take the event within ``timeout``.
        """
        fields: dict[str, Any] = {
            "prediction_id": prediction_id, "label": label,
            "timestamp": datetime.now(timezone.utc) if timestamp is None else timestamp,
        }
        if source is not None:
            fields["source"] = source
        event = _validate(LabelEvent, fields)
        self._send(self.labels_topic, event.prediction_id, _encode(event, fields))
        return event

    def _send(self, topic: str, key: str, value: bytes) -> None:
        if self._closed:
            raise RuntimeError("the prediction client is closed")
        try:
            future = self.producer.send(topic, key=key.encode(), value=value)
        except kerrors.KafkaTimeoutError as exc:
            raise BrokerUnavailableError(
                f"Kafka at {self.settings.kafka_bootstrap} did not take an event for topic {topic!r} "
                f"within {self.timeout:g}s ({exc}); check that the broker is running and that the topic "
                "exists (the worker creates the contract's topics at startup)") from exc
        except kerrors.KafkaError as exc:
            raise _unavailable(str(self.settings.kafka_bootstrap), exc) from exc
        with self._lock:
            self.sent += 1
        if hasattr(future, "add_errback"):
            future.add_errback(self._delivery_failed, topic, key)

    def _delivery_failed(self, topic: str, key: str, exc: BaseException) -> None:
        log.error("delivery of %s to %s failed: %s", key, topic, exc)
        with self._lock:
            self.failed += 1
            self._errors.append(f"{topic} {key}: {exc}")

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event sent so far is acknowledged (or failed).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait (default: the client's ``timeout`` plus 20 s).

        Raises
        ------
        BrokerUnavailableError
            Not everything was acknowledged in time, or some events failed since the last flush
            (the message gives the count and the last error).
        """
        wait = self.timeout + 20.0 if timeout is None else timeout
        try:
            self.producer.flush(timeout=wait)
        except kerrors.KafkaTimeoutError as exc:
            raise BrokerUnavailableError(
                f"Kafka at {self.settings.kafka_bootstrap} did not acknowledge the events sent within "
                f"{wait:g}s ({exc})") from exc
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise BrokerUnavailableError(
                f"{len(errors)} event(s) were not delivered; the last: {errors[-1]}")

    def close(self, timeout: float | None = None) -> None:
        """Flush, then close the producer if the client created it; idempotent.

        Raises
        ------
        BrokerUnavailableError
            As :meth:`flush`; the producer is closed all the same.
        """
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            if self._own_producer:
                try:
                    self.producer.close(timeout=5)
                except Exception as exc:  # noqa: BLE001 - closing must not hide the flush's error
                    log.warning("closing the Kafka producer failed: %s", exc)

    def __enter__(self) -> PredictionClient:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # do not hide the exception on its way out
            self.close()
        except FeedbackLoopError as close_error:
            log.error("closing the prediction client: %s", close_error)


def _validate(schema: type[Event], fields: dict[str, Any]) -> Any:
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        raise InvalidEventError(describe_validation_error(exc)) from None


def _encode(event: Event, fields: Mapping[str, Any]) -> bytes:
    """The event's JSON; a value JSON cannot represent raises InvalidEventError naming its field."""
    try:
        return event.to_json()
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        for name, value in fields.items():
            try:
                to_json(value)
            except (PydanticSerializationError, TypeError, ValueError) as field_exc:
                raise InvalidEventError(f"{name}: not JSON-serialisable ({field_exc})") from None
        raise InvalidEventError(f"message: not JSON-serialisable ({exc})") from None


# ============================================================================ the handle
class _Served(NamedTuple):
    """What a handle serves, swapped as one value: the estimator, its version, its spec name."""

    estimator: Any
    version: str | None
    name: str | None  # the registry spec name; None for the fallback


_NOTHING = _Served(None, None, None)
_UNSET: Any = object()


class ModelHandle:
    """The current champion of one model, predicting locally and swapped without dropping a request.

    Parameters
    ----------
    registry : ModelRegistry
        The model registry (:class:`online_models.registry.ModelRegistry`).
    model : str
        The producer's model name, e.g. ``"churn"``.
    fallback : estimator, optional
        Served when there is no champion, when the champion is an external version (a model of
        the producer's own, not in the registry), and when no registry version loads. Anything with
        ``predict_one`` (and ``predict_proba_one`` if you call it).
    fallback_version : str, optional
        The version name reported for the fallback when there is no champion (default
        ``"fallback"``); an external champion's own version name is reported otherwise.

    Raises
    ------
    StoreUnavailableError
        Redis did not answer the first :meth:`refresh`.

    Notes
    -----
    The constructor loads the champion (:meth:`refresh`). ``swaps`` counts the times the served
    model changed, ``served`` the predictions answered.

    In a producer service::

        handle = ModelHandle(registry, "churn", fallback=my_rules).follow(settings)
        y, version = handle.predict_one(x)
        client.predict(prediction_id, "churn", version, x, y)  # a PredictionClient
    """

    def __init__(self, registry: Any, model: str, *, fallback: Any = None,
                 fallback_version: str = "fallback") -> None:
        if not model:
            raise ValueError("model must be a non-empty name")
        self.registry = registry
        self.model = model
        self.fallback = fallback
        self.fallback_version = fallback_version
        self.swaps = 0
        self._served_count = 0
        self._count_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._state: _Served = _NOTHING
        self._applied: Any = _UNSET  # the champion record the state reflects
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_refresh = False
        self._pending_checkpoint: tuple[str, str] | None = None
        self.refresh()

    # ------------------------------------------------------------------ serving
    @property
    def version(self) -> str | None:
        """The version served now (None when nothing can be served)."""
        return self._state.version

    @property
    def name(self) -> str | None:
        """The registry spec name of the served model (None for the fallback)."""
        return self._state.name

    @property
    def served(self) -> int:
        """Predictions answered so far."""
        return self._served_count

    def _current(self) -> _Served:
        state = self._state  # the one read a request makes: a swap after it does not affect it
        if state.estimator is None:
            raise ModelUnavailableError(
                f"no model to serve for {self.model!r}: the registry has no usable champion and no "
                "fallback was given")
        return state

    def _count(self) -> None:
        with self._count_lock:
            self._served_count += 1

    def predict_one(self, x: dict[str, Any]) -> tuple[Any, str]:
        """Predict with the current model.

        Returns
        -------
        tuple
            ``(prediction, version)``: both from the same model, whatever swaps meanwhile.

        Raises
        ------
        ModelUnavailableError
            Nothing to serve.
        """
        state = self._current()
        y = state.estimator.predict_one(x)
        self._count()
        return y, state.version

    def predict_proba_one(self, x: dict[str, Any]) -> tuple[dict[Any, float], str]:
        """Class probabilities from the current model.

        Returns
        -------
        tuple
            ``(probabilities, version)``: both from the same model, whatever swaps meanwhile.

        Raises
        ------
        ModelUnavailableError
            Nothing to serve.
        """
        state = self._current()
        proba = state.estimator.predict_proba_one(x)
        self._count()
        return proba, state.version

    # ------------------------------------------------------------------ loading
    def refresh(self, *, force: bool = False) -> bool:
        """Load the champion the registry names now, if it changed since the last refresh.

        A registry version is loaded and verified beside the served model, which stays in use
        until the swap. If it fails verification the error is logged and the current model kept;
        with nothing current, the newest version of the same spec that loads is used, else the
        fallback. An external champion version (not in the registry), or no champion, means the
        fallback, reported under that version name (or ``fallback_version``).

        Parameters
        ----------
        force : bool, optional
            Reload even if the champion record did not change.

        Returns
        -------
        bool
            Whether the served model changed.

        Raises
        ------
        StoreUnavailableError
            Redis did not answer; the current model is kept.
        """
        with self._reload_lock:
            try:
                return self._refresh(force)
            except redis_lib.RedisError as exc:
                raise StoreUnavailableError(
                    f"Redis did not answer while reading the champion of {self.model!r} ({exc}); "
                    "keeping the current model") from exc

    def _refresh(self, force: bool) -> bool:
        current = self._state
        try:
            record = self.registry.champion(self.model)
        except CheckpointIntegrityError as exc:
            log.error("champion record of %s is unreadable: %s; keeping %s", self.model, exc,
                      current.version)
            if current.estimator is None and self.fallback is not None:
                return self._swap(_Served(self.fallback, self.fallback_version, None))
            return False
        if not force and record == self._applied and current.estimator is not None:
            return False
        if record is None:
            if self.fallback is None:
                if current.estimator is None:
                    log.warning("no champion for %s in the registry and no fallback: nothing to serve",
                                self.model)
                return False
            self._applied = record
            return self._swap(_Served(self.fallback, self.fallback_version, None))
        version = record["version"]
        if not force and current.name is not None and version == current.version:
            self._applied = record  # e.g. promoted again: the served model is that very version
            return False
        known = self._known_versions()
        if version not in known:
            if self.fallback is None:
                log.error("champion %s of %s is not in the registry (an external model) and this handle "
                          "has no fallback; keeping %s", version, self.model, current.version)
                return False
            self._applied = record
            return self._swap(_Served(self.fallback, version, None))
        try:
            checkpoint = self.registry.load(self.model, version)
        except CheckpointIntegrityError as exc:
            if current.estimator is not None:
                log.error("cannot load champion %s of %s: %s; keeping %s", version, self.model, exc,
                          current.version)
                return False
            name = known[version].get("name") or version.rsplit("-", 1)[0]
            log.error("cannot load champion %s of %s: %s; trying the newest %s version that loads",
                      version, self.model, exc, name)
            checkpoint, _refused = self.registry.load_latest(self.model, name)
            if checkpoint is None:
                if self.fallback is None:
                    log.error("no %s version of %s loads and there is no fallback: nothing to serve",
                              name, self.model)
                    return False
                return self._swap(_Served(self.fallback, self.fallback_version, None))
            log.warning("serving %s %s in place of the champion %s", self.model, checkpoint.version, version)
            return self._swap(_Served(checkpoint.estimator, checkpoint.version, checkpoint.name))
        self._applied = record
        return self._swap(_Served(checkpoint.estimator, checkpoint.version, checkpoint.name))

    def _known_versions(self) -> dict[str, dict]:
        """The registry's kept versions of the model, by version id (listing meta, nothing unpickled)."""
        return {meta["version"]: meta for meta in self.registry.versions(self.model) if "version" in meta}

    def _load_checkpoint(self, version: str, name: str) -> bool:
        """Serve ``version``, a fresher checkpoint of the served spec ``name``; False if not applicable."""
        with self._reload_lock:
            current = self._state
            if current.name is None or current.name != name or current.version == version:
                return False
            try:
                checkpoint = self.registry.load(self.model, version)
            except CheckpointIntegrityError as exc:
                log.error("cannot load checkpoint %s of %s: %s; keeping %s", version, self.model, exc,
                          current.version)
                return False
            except redis_lib.RedisError as exc:
                raise StoreUnavailableError(
                    f"Redis did not answer while loading {self.model} {version} ({exc})") from exc
            if checkpoint.name != current.name:
                log.error("checkpoint %s of %s is of spec %s, not %s; keeping %s", version, self.model,
                          checkpoint.name, current.name, current.version)
                return False
            return self._swap(_Served(checkpoint.estimator, checkpoint.version, checkpoint.name))

    def _swap(self, new: _Served) -> bool:
        old = self._state
        if new.estimator is old.estimator and new.version == old.version:
            return False
        self._state = new  # one assignment: requests see either the old tuple or the new one
        self.swaps += 1
        log.info("%s now serves %s (was %s)", self.model, new.version, old.version)
        return True

    # ------------------------------------------------------------------ following model-updates
    def follow(self, settings: Settings, *, poll_seconds: float = 0.2, timeout: float = 10.0) -> ModelHandle:
        """Follow ``model-updates`` in a daemon thread; returns the handle.

        Only decisions published from now on count (the consumer starts at the end of every
        partition of the topic, without a consumer group). A ``promote``, ``rollback`` or
        ``register`` of this model re-reads the champion (:meth:`refresh`); a ``checkpoint`` whose
        ``evidence["name"]`` is the served spec loads that version (the champion's fresher weights).
        A reload that fails because Redis is down is retried every few seconds.

        Parameters
        ----------
        settings : Settings
            Gives ``kafka_bootstrap`` and the topic name.
        poll_seconds : float, optional
            Longest wait of one poll; :meth:`close` takes at most about this long plus closing.
        timeout : float, optional
            Seconds to wait for the broker when connecting.

        Raises
        ------
        ConfigurationError
            ``kafka_bootstrap`` unset, or the ``model-updates`` topic does not exist.
        BrokerUnavailableError
            The broker did not answer.
        RuntimeError
            Already following.
        """
        if self._thread is not None:
            raise RuntimeError(f"the handle of {self.model!r} already follows model-updates; close() it first")
        from kafka import KafkaConsumer, TopicPartition

        bootstrap = _check_bootstrap(settings, "following model-updates")
        topic = settings.topic("model-updates")
        timeout_ms = max(int(timeout * 1000), 100)
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                client_id=f"feedback-loop-serving-{self.model}", bootstrap_timeout_ms=timeout_ms,
                request_timeout_ms=max(timeout_ms, 1000), **kafka_python_kwargs(settings))
        except (kerrors.KafkaError, OSError) as exc:
            raise _unavailable(bootstrap, exc) from exc
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise ConfigurationError(
                    f"topic {topic!r} does not exist on {bootstrap}; the worker creates it at startup "
                    "(or create it with feedback_loop.kafka_admin.ensure_topics)")
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            consumer.seek_to_end(*tps)
            for tp in tps:  # resolve the end offsets now: what is published after follow() counts
                consumer.position(tp, timeout_ms=timeout_ms)
        except kerrors.KafkaError as exc:
            consumer.close(autocommit=False)
            raise _unavailable(bootstrap, exc) from exc
        except BaseException:
            consumer.close(autocommit=False)
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow_loop, args=(consumer, poll_seconds),
                                        name=f"model-updates-{self.model}", daemon=True)
        self._thread.start()
        self._refresh_safely()  # decisions made between the constructor's load and now
        return self

    def _follow_loop(self, consumer: Any, poll_seconds: float) -> None:
        retry_at = 0.0
        try:
            while not self._stop.is_set():
                try:
                    batches = consumer.poll(timeout_ms=max(int(poll_seconds * 1000), 1))
                except kerrors.KafkaError as exc:
                    log.warning("polling model-updates failed: %s; retrying", exc)
                    self._stop.wait(1.0)
                    continue
                for records in batches.values():
                    for record in records:
                        self._on_update(record)
                if (self._pending_refresh or self._pending_checkpoint) and time.monotonic() >= retry_at:
                    retry_at = time.monotonic() + 2.0
                    if self._pending_refresh:
                        self._refresh_safely()
                    if self._pending_checkpoint:
                        self._checkpoint_safely(*self._pending_checkpoint)
        except Exception:
            log.exception("the model-updates follower of %s stopped; serving %s without updates",
                          self.model, self._state.version)
        finally:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:  # noqa: BLE001
                log.warning("closing the model-updates consumer failed: %s", exc)

    def _on_update(self, record: Any) -> None:
        try:
            update: ModelUpdate = decode(ModelUpdate, record.value)
        except InvalidEventError as exc:
            log.warning("ignoring an invalid message on %s[%d]@%d: %s", record.topic, record.partition,
                        record.offset, exc.reason)
            return
        if update.model != self.model:
            return
        log.info("model-updates: %s %s %s", update.action, update.model, update.version)
        if update.action in REFRESH_ACTIONS:
            self._refresh_safely()
        elif update.action == "checkpoint":
            name = update.evidence.get("name")
            if isinstance(name, str):
                self._checkpoint_safely(update.version, name)

    def _refresh_safely(self) -> None:
        try:
            self.refresh()
            self._pending_refresh = False
        except Exception as exc:  # noqa: BLE001 - keep serving; retried by the follower
            log.error("reloading the champion of %s failed: %s; serving %s and retrying", self.model, exc,
                      self._state.version)
            self._pending_refresh = True

    def _checkpoint_safely(self, version: str, name: str) -> None:
        try:
            self._load_checkpoint(version, name)
            self._pending_checkpoint = None
        except Exception as exc:  # noqa: BLE001 - same
            log.error("loading checkpoint %s of %s failed: %s; serving %s and retrying", version, self.model,
                      exc, self._state.version)
            self._pending_checkpoint = (version, name)

    @property
    def following(self) -> bool:
        """Whether the follower thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 4.0) -> None:
        """Stop following ``model-updates`` (waits at most ``timeout`` s); the handle still serves."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the model-updates follower of %s did not stop within %gs", self.model, timeout)

    def __enter__(self) -> ModelHandle:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
