"""Where drift alerts go: a terminal, a webhook, a Redis list.

A sink delivers one :class:`~feedback_loop.events.DriftAlert` at a time and either returns
(delivered), raises :class:`UndeliverableError` (it will never get through: the consumer parks the
alert where people can see it), or raises :class:`DeliveryCancelled` (the process is stopping; the
alert is neither delivered nor parked, so its offset is not committed and it is consumed again).
Any other exception is a bug or an outage the consumer retries.

Every wait is bounded: HTTP requests have a timeout, retries a count, backoffs a ceiling, and the
backoff sleeps wake up as soon as the ``cancel`` event is set.

Examples
--------
>>> import io
>>> from feedback_loop.events import DriftAlert
>>> alert = DriftAlert(alert_id="a-1", kind="data", detector="psi", model="churn",
...                    model_version="2026-11-01", feature="age", severity="critical",
...                    detected_at="2026-11-22T10:00:00Z", message="PSI 0.31 > 0.20")
>>> out = io.StringIO()
>>> PrintSink(out).deliver(alert)
>>> print(out.getvalue(), end="")
2026-11-22T10:00:00Z CRITICAL data drift  churn/2026-11-01  feature=age  PSI 0.31 > 0.20  [alert a-1]
"""

from __future__ import annotations

import abc
import http.client
import json
import logging
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, TextIO

import redis as redis_lib

from feedback_loop.errors import ConfigurationError, FeedbackLoopError
from feedback_loop.events import DriftAlert

__all__ = [
    "DeliveryCancelled",
    "PrintSink",
    "RedisSink",
    "Sink",
    "UndeliverableError",
    "WebhookSink",
    "backoff_delay",
    "format_alert",
    "pushed_alerts",
    "validate_webhook_url",
]

log = logging.getLogger(__name__)

_USER_AGENT = "feedback-loop-alerts/0.1"
_BODY_SNIPPET = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class UndeliverableError(FeedbackLoopError):
    """The sink will never deliver this alert (a 4xx answer, or retries exhausted).

    ``reason`` says why, ready for the undeliverable list; ``attempts`` is how many were made.
    """

    def __init__(self, reason: str, attempts: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class DeliveryCancelled(FeedbackLoopError):
    """Delivery stopped because the consumer is stopping; the alert must be consumed again."""


def backoff_delay(attempt: int, backoff: float, max_backoff: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (0-based): exponential, capped, jittered.

    The delay is drawn uniformly from ``[d/2, d]`` with ``d = min(max_backoff, backoff * 2**attempt)``
    ("equal jitter"): retries of many consumers spread out, yet never come back faster than half
    the nominal delay.

    >>> nominal = [min(3.0, 0.5 * 2**a) for a in range(5)]
    >>> nominal
    [0.5, 1.0, 2.0, 3.0, 3.0]
    >>> all(d / 2 <= backoff_delay(a, 0.5, 3.0) <= d for a, d in enumerate(nominal))
    True
    """
    nominal = min(max_backoff, backoff * (2 ** min(attempt, 62)))
    return (rng or random).uniform(nominal / 2, nominal)


def _one_line(text: object) -> str:
    return _CONTROL.sub(" ", str(text)).strip()


def format_alert(alert: DriftAlert) -> str:
    """One line for a human on call: time, severity, kind, model/version, feature, message.

    Control characters (newlines included) in producer-supplied text become spaces, so one alert
    is always one line. A resolved alert says ``RESOLVED`` after its kind.

    >>> alert = DriftAlert(alert_id="a-2", kind="concept", detector="adwin", model="churn",
    ...                    model_version="v3", severity="warning", status="resolved",
    ...                    detected_at="2026-11-22T12:30:00+02:00", message="accuracy back\\nto 0.86")
    >>> format_alert(alert)
    '2026-11-22T10:30:00Z WARNING  concept drift RESOLVED  churn/v3  feature=-  accuracy back to 0.86  [alert a-2]'
    """
    when = alert.detected_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = " RESOLVED" if alert.status == "resolved" else ""
    feature = _one_line(alert.feature) if alert.feature else "-"
    return (
        f"{when} {alert.severity.upper():<8} {alert.kind} drift{status}  "
        f"{_one_line(alert.model)}/{_one_line(alert.model_version)}  feature={feature}  "
        f"{_one_line(alert.message)}  [alert {_one_line(alert.alert_id)}]"
    )


class Sink(abc.ABC):
    """A destination of drift alerts.

    ``name`` identifies the destination: the consumer remembers which alerts were delivered per
    sink name (``<namespace>:alerts:delivered:<name>``), so two consumers that deliver to
    *different* destinations of the same kind must use different names.
    """

    name: str = "sink"

    @abc.abstractmethod
    def deliver(self, alert: DriftAlert, *, cancel: threading.Event | None = None) -> None:
        """Deliver ``alert`` or raise :class:`UndeliverableError` / :class:`DeliveryCancelled`."""

    def max_delivery_seconds(self) -> float:
        """An upper bound of the time one :meth:`deliver` call may take (retries included)."""
        return 10.0

    def close(self) -> None:
        """Release connections; the sink is not used afterwards."""

    def describe(self) -> str:
        """Where alerts go, for a status line."""
        return self.name


def _sleep(seconds: float, cancel: threading.Event | None) -> None:
    """Sleep ``seconds``; raise :class:`DeliveryCancelled` as soon as ``cancel`` is set."""
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise DeliveryCancelled("stopping: delivery interrupted during a retry backoff")


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise DeliveryCancelled("stopping: delivery not attempted")


# --------------------------------------------------------------------------- print
class PrintSink(Sink):
    """Write each alert as one line to ``stream`` (standard output by default).

    With ``json_lines=True`` the line is the alert's JSON instead of the human-readable
    :func:`format_alert` text. A stream that cannot be written (closed pipe) makes the alert
    undeliverable: it is parked, not lost.
    """

    def __init__(self, stream: TextIO | None = None, *, json_lines: bool = False, name: str = "print") -> None:
        self._stream = stream
        self.json_lines = json_lines
        self.name = name

    @property
    def stream(self) -> TextIO:
        # Resolved at write time, so a replaced sys.stdout (tests, redirection) is honoured.
        return self._stream if self._stream is not None else sys.stdout

    def deliver(self, alert: DriftAlert, *, cancel: threading.Event | None = None) -> None:
        _check_cancel(cancel)
        line = alert.to_json().decode() if self.json_lines else format_alert(alert)
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: write to a closed file
            raise UndeliverableError(f"cannot write to the output stream: {exc}") from exc

    def max_delivery_seconds(self) -> float:
        return 5.0

    def describe(self) -> str:
        return f"{self.name} ({'JSON lines' if self.json_lines else 'text'} on standard output)"


# --------------------------------------------------------------------------- webhook
def validate_webhook_url(url: str | None) -> str:
    """Return ``url`` if it is an absolute http(s) URL with a host, else raise ConfigurationError.

    >>> validate_webhook_url("https://hooks.example.com/alerts?team=ml")
    'https://hooks.example.com/alerts?team=ml'
    >>> validate_webhook_url("ftp://example.com")
    Traceback (most recent call last):
    ...
    feedback_loop.errors.ConfigurationError: --url must be an http:// or https:// URL, got 'ftp://example.com'
    """
    if url is None or not str(url).strip():
        raise ConfigurationError("the webhook sink needs --url, e.g. --url https://hooks.example.com/alerts")
    url = str(url).strip()
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigurationError(f"--url {url!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigurationError(f"--url must be an http:// or https:// URL, got {url!r}")
    if not parts.hostname:
        raise ConfigurationError(f"--url {url!r} has no host; e.g. --url https://hooks.example.com/alerts")
    if _CONTROL.search(url) or " " in url:
        raise ConfigurationError(f"--url {url!r} contains spaces or control characters; percent-encode them")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would turn a redirected POST into a body-less GET: report the 3xx instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def _header_value(alert_id: str) -> str:
    """``alert_id`` as an HTTP header value (percent-encoded if not printable ASCII)."""
    if alert_id.isascii() and alert_id.isprintable():
        return alert_id
    return urllib.parse.quote(alert_id, safe="")


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date), if any."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _with_retries(sink: Any, alert: DriftAlert, once: Callable[[], None], cancel: threading.Event | None,
                  rng: random.Random | None = None) -> None:
    """Call ``once`` until it returns, retrying on :class:`_Retryable` with exponential backoff
    (``sink.retries``, ``sink.backoff``, ``sink.max_backoff``); anything else propagates."""
    last = "no attempt"
    attempts = 0
    for attempt in range(sink.retries + 1):
        _check_cancel(cancel)
        attempts += 1
        try:
            once()
        except _Retryable as exc:
            last = exc.reason
            if attempt == sink.retries:
                break
            delay = backoff_delay(attempt, sink.backoff, sink.max_backoff, rng)
            if exc.retry_after is not None:
                delay = min(sink.max_backoff, max(delay, exc.retry_after))
            log.warning("%s sink: alert %s attempt %d/%d failed (%s); retrying in %.2fs",
                        sink.name, alert.alert_id, attempts, sink.retries + 1, last, delay)
            _sleep(delay, cancel)
            continue
        if attempts > 1:
            log.info("%s sink: alert %s delivered on attempt %d", sink.name, alert.alert_id, attempts)
        return
    raise UndeliverableError(f"gave up after {attempts} attempts: {last}", attempts=attempts)


class WebhookSink(Sink):
    """POST each alert's JSON to ``url`` with the header ``Idempotency-Key: <alert_id>``.

    Connection errors, timeouts, 5xx and 429 answers are retried ``retries`` times with
    exponential backoff and jitter (:func:`backoff_delay`; a ``Retry-After`` header lengthens the
    wait, never beyond ``max_backoff``). Any other answer outside 2xx (4xx, and 3xx: redirects of
    a POST are not followed) is final: the alert is undeliverable. ``timeout`` bounds connecting
    and each read of one request. Proxies come from the usual ``https_proxy`` / ``no_proxy``
    environment variables.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        name: str = "webhook",
        headers: dict[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = validate_webhook_url(url)
        if timeout <= 0:
            raise ConfigurationError(f"webhook timeout must be positive, got {timeout}")
        if retries < 0:
            raise ConfigurationError(f"webhook retries must be 0 or more, got {retries}")
        if backoff < 0 or max_backoff < 0:
            raise ConfigurationError("webhook backoff and max_backoff must be 0 or more")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.name = name
        self.headers = dict(headers or {})
        self._rng = rng or random.Random()
        self._opener = urllib.request.build_opener(_NoRedirect)

    def describe(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return f"{self.name} (POST {parts.scheme}://{parts.netloc}{parts.path})"  # no query: may hold a token

    def max_delivery_seconds(self) -> float:
        attempts = self.retries + 1
        # connect + send + read, each bounded by the timeout
        return attempts * 3 * self.timeout + self.retries * self.max_backoff

    def deliver(self, alert: DriftAlert, *, cancel: threading.Event | None = None) -> None:
        body = alert.to_json()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, */*;q=0.5",
            "User-Agent": _USER_AGENT,
            **self.headers,
            "Idempotency-Key": _header_value(alert.alert_id),
        }
        _with_retries(self, alert, lambda: self._post(body, headers), cancel, self._rng)

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(64 * 1024)  # drain a little, so keep-alive proxies are happy
        except urllib.error.HTTPError as exc:
            status = exc.code
            snippet = _snippet(exc)
            reason = f"HTTP {status} {exc.reason}" + (f": {snippet}" if snippet else "")
            if status == 429 or 500 <= status <= 599:
                raise _Retryable(reason, _retry_after(exc.headers.get("Retry-After") if exc.headers else None))
            if 300 <= status <= 399:
                location = exc.headers.get("Location") if exc.headers else None
                reason += f" (redirect to {location!r} not followed; point --url at the final address)"
            raise UndeliverableError(f"{reason} (not retried)") from None
        except urllib.error.URLError as exc:
            raise _Retryable(f"cannot reach {urllib.parse.urlsplit(self.url).netloc}: {exc.reason}") from None
        except TimeoutError as exc:
            raise _Retryable(f"timed out after {self.timeout:g}s ({exc})") from None
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise _Retryable(f"connection failed: {type(exc).__name__}: {exc}") from None


def _snippet(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read(_BODY_SNIPPET + 1) or b""
    except Exception:  # noqa: BLE001 - the body is only a hint
        return ""
    text = _one_line(raw.decode("utf-8", "replace"))
    return text[:_BODY_SNIPPET] + ("..." if len(text) > _BODY_SNIPPET else "")


# --------------------------------------------------------------------------- redis
class RedisSink(Sink):
    """LPUSH each alert's JSON to the Redis list ``key`` and LTRIM it to ``max_length`` (newest first).

    Connection errors and timeouts are retried ``retries`` times with backoff; a refused command
    (for example ``key`` holding another type) makes the alert undeliverable. ``security`` is extra
    keyword arguments of the client created from ``redis_url``
    (:func:`feedback_loop.kafka_security.redis_kwargs`: the CA bundle of a ``rediss://`` URL).
    """

    def __init__(
        self,
        redis_url: str,
        key: str,
        *,
        max_length: int = 1000,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        socket_timeout: float = 5.0,
        name: str = "redis",
        client: redis_lib.Redis | None = None,
        security: dict[str, Any] | None = None,
    ) -> None:
        if not key:
            raise ConfigurationError("the redis sink needs a list key (--redis-key)")
        if max_length < 1:
            raise ConfigurationError(f"the redis sink's max length must be at least 1, got {max_length}")
        self.key = key
        self.max_length = int(max_length)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.socket_timeout = float(socket_timeout)
        self.name = name
        self._own_client = client is None
        if client is None:
            try:
                client = redis_lib.Redis.from_url(
                    redis_url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                    **dict(security or {}))
            except ValueError as exc:
                raise ConfigurationError(f"invalid Redis URL {redis_url!r} for the redis sink: {exc}; "
                                         "fix --redis (FEEDBACK_LOOP_REDIS_URL)") from None
        self._client = client

    def describe(self) -> str:
        return f"{self.name} (Redis list {self.key}, newest {self.max_length})"

    def max_delivery_seconds(self) -> float:
        return (self.retries + 1) * 2 * self.socket_timeout + self.retries * self.max_backoff

    def deliver(self, alert: DriftAlert, *, cancel: threading.Event | None = None) -> None:
        payload = alert.to_json()

        def push() -> None:
            try:
                pipe = self._client.pipeline(transaction=True)
                pipe.lpush(self.key, payload)
                pipe.ltrim(self.key, 0, self.max_length - 1)
                pipe.execute()
            except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
                raise _Retryable(f"{type(exc).__name__}: {exc}") from None
            except redis_lib.RedisError as exc:
                raise UndeliverableError(f"Redis refused LPUSH to {self.key}: {exc} (not retried)") from None

        _with_retries(self, alert, push, cancel)

    def close(self) -> None:
        if self._own_client:
            self._client.close()


def pushed_alerts(client: redis_lib.Redis, key: str, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` alerts a :class:`RedisSink` pushed to ``key`` (as dicts, newest first)."""
    if limit <= 0:
        return []
    out: list[dict[str, Any]] = []
    for raw in client.lrange(key, 0, limit - 1):
        try:
            out.append(json.loads(raw))
        except (ValueError, TypeError):
            out.append({"error": "unreadable entry", "raw": _as_text(raw)})
    return out


def _as_text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)

