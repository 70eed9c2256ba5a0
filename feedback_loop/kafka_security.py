"""Security settings turned into client keyword arguments: SASL/TLS for Kafka, TLS for Redis.

Every Kafka or Redis client the package creates spreads one of these into its constructor, so one
set of settings reaches every client:

* :func:`aiokafka_kwargs` for ``aiokafka.AIOKafkaProducer`` / ``AIOKafkaConsumer``;
* :func:`kafka_python_kwargs` for kafka-python's ``KafkaProducer`` / ``KafkaConsumer`` /
  ``KafkaAdminClient``;
* :func:`faust_credentials` for ``faust.App(broker_credentials=...)`` (Faust hands them to the
  aiokafka clients it creates);
* :func:`redis_kwargs` for ``redis.Redis.from_url`` and ``redis.asyncio.Redis.from_url``.

With the defaults (``PLAINTEXT``, a ``redis://`` URL) the keyword arguments are empty and the
credentials ``None``: the clients are created exactly as without this module. The combinations
themselves are checked when :class:`~feedback_loop.settings.Settings` loads.

Redis TLS is chosen by the URL scheme (``rediss://``) and the ACL user and password go in the
URL (``rediss://user:password@host:6380/0``); only the CA bundle is a separate setting.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from feedback_loop.settings import Settings

if TYPE_CHECKING:  # faust is heavy to import; only faust_credentials needs it, lazily
    from faust.types.auth import CredentialsT

__all__ = ["aiokafka_kwargs", "faust_credentials", "kafka_python_kwargs", "redis_kwargs", "ssl_context",
           "uses_sasl", "uses_tls"]


def uses_tls(settings: Settings) -> bool:
    """Whether the Kafka connection is encrypted (``SSL`` or ``SASL_SSL``)."""
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    """Whether the Kafka connection authenticates with SASL (``SASL_PLAINTEXT`` or ``SASL_SSL``)."""
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def _path(value: Any) -> str | None:
    return None if value is None else str(value)


def _sasl(settings: Settings) -> dict[str, Any]:
    password = settings.kafka_sasl_password
    return {
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": None if password is None else password.get_secret_value(),
    }


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of the aiokafka and Faust clients.

    Built with :func:`aiokafka.helpers.create_ssl_context` from ``kafka_ssl_cafile`` (the system
    CAs when unset) and the client certificate ``kafka_ssl_certfile`` / ``kafka_ssl_keyfile``
    (mutual TLS, optional); ``kafka_ssl_check_hostname=False`` still verifies the certificate
    chain but not the broker's name.
    """
    from aiokafka.helpers import create_ssl_context

    context = create_ssl_context(cafile=_path(settings.kafka_ssl_cafile),
                                 certfile=_path(settings.kafka_ssl_certfile),
                                 keyfile=_path(settings.kafka_ssl_keyfile))
    if not settings.kafka_ssl_check_hostname:
        context.check_hostname = False
    return context


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of an aiokafka producer or consumer for ``settings``.

    Parameters
    ----------
    settings : Settings
        ``kafka_security_protocol`` and the ``kafka_sasl_*`` / ``kafka_ssl_*`` settings.

    Returns
    -------
    dict
        Empty for ``PLAINTEXT`` (aiokafka's defaults). Otherwise ``security_protocol``, plus
        ``sasl_mechanism``, ``sasl_plain_username`` and ``sasl_plain_password`` for the SASL
        protocols and ``ssl_context`` (see :func:`ssl_context`) for the TLS ones.

    Examples
    --------
    >>> aiokafka_kwargs(Settings())
    {}
    >>> kwargs = aiokafka_kwargs(Settings(
    ...     kafka_bootstrap="kafka:9093", kafka_security_protocol="SASL_SSL",
    ...     kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="fl", kafka_sasl_password="s3cret"))
    >>> {k: v for k, v in kwargs.items() if k != "ssl_context"}  # doctest: +NORMALIZE_WHITESPACE
    {'security_protocol': 'SASL_SSL', 'sasl_mechanism': 'SCRAM-SHA-512',
     'sasl_plain_username': 'fl', 'sasl_plain_password': 's3cret'}
    >>> kwargs["ssl_context"].check_hostname
    True
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if uses_sasl(settings):
        kwargs.update(_sasl(settings))
    if uses_tls(settings):
        kwargs["ssl_context"] = ssl_context(settings)
    return kwargs


def kafka_python_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of a kafka-python producer, consumer or admin client for ``settings``.

    Parameters
    ----------
    settings : Settings
        ``kafka_security_protocol`` and the ``kafka_sasl_*`` / ``kafka_ssl_*`` settings.

    Returns
    -------
    dict
        Empty for ``PLAINTEXT`` (kafka-python's defaults). Otherwise ``security_protocol``, plus
        ``sasl_mechanism``, ``sasl_plain_username`` and ``sasl_plain_password`` for the SASL
        protocols and, for the TLS ones, ``ssl_check_hostname`` and those of ``ssl_cafile``,
        ``ssl_certfile`` and ``ssl_keyfile`` that are set (kafka-python builds the context; without
        a CA file it uses the system CAs).

    Examples
    --------
    >>> kafka_python_kwargs(Settings())
    {}
    >>> kafka_python_kwargs(Settings(
    ...     kafka_bootstrap="kafka:9093", kafka_security_protocol="SASL_SSL",
    ...     kafka_sasl_username="fl", kafka_sasl_password="s3cret"))  # doctest: +NORMALIZE_WHITESPACE
    {'security_protocol': 'SASL_SSL', 'sasl_mechanism': 'PLAIN', 'sasl_plain_username': 'fl',
     'sasl_plain_password': 's3cret', 'ssl_check_hostname': True}
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if uses_sasl(settings):
        kwargs.update(_sasl(settings))
    if uses_tls(settings):
        kwargs["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        for name in ("cafile", "certfile", "keyfile"):
            value = getattr(settings, f"kafka_ssl_{name}")
            if value is not None:
                kwargs[f"ssl_{name}"] = str(value)
    return kwargs


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """``broker_credentials`` of the Faust app for ``settings``.

    Parameters
    ----------
    settings : Settings
        ``kafka_security_protocol`` and the ``kafka_sasl_*`` / ``kafka_ssl_*`` settings.

    Returns
    -------
    faust.SASLCredentials, faust.SSLCredentials or None
        ``None`` for ``PLAINTEXT`` (Faust's default); :class:`faust.SSLCredentials` around
        :func:`ssl_context` for ``SSL``; :class:`faust.SASLCredentials` for the SASL protocols,
        with the TLS context for ``SASL_SSL`` (which is how Faust tells SASL_SSL from
        SASL_PLAINTEXT).

    Examples
    --------
    >>> faust_credentials(Settings()) is None
    True
    >>> credentials = faust_credentials(Settings(
    ...     kafka_bootstrap="kafka:9093", kafka_security_protocol="SASL_SSL",
    ...     kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="fl", kafka_sasl_password="s3cret"))
    >>> credentials
    <SASLCredentials: username=fl>
    >>> credentials.protocol.value, credentials.mechanism.value
    ('SASL_SSL', 'SCRAM-SHA-256')
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    import faust

    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    sasl = _sasl(settings)
    return faust.SASLCredentials(
        username=sasl["sasl_plain_username"], password=sasl["sasl_plain_password"],
        mechanism=sasl["sasl_mechanism"], ssl_context=ssl_context(settings) if uses_tls(settings) else None)


def redis_kwargs(settings: Settings, url: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``Redis.from_url(url, ...)`` (redis-py, sync or asyncio).

    Parameters
    ----------
    settings : Settings
        Gives ``redis_ssl_ca_certs``.
    url : str, optional
        The URL the client connects to (default ``settings.redis_url``).

    Returns
    -------
    dict
        ``{"ssl_ca_certs": PATH}`` when the URL is ``rediss://`` and ``redis_ssl_ca_certs`` is set;
        otherwise empty (a ``rediss://`` URL alone verifies the server against the system CAs;
        password and ACL user come from the URL).

    Examples
    --------
    >>> redis_kwargs(Settings(redis_url="redis://:pw@redis:6379/0"))
    {}
    >>> redis_kwargs(Settings(), "rediss://fl:pw@redis:6380/0")
    {}
    """
    target = settings.redis_url if url is None else url
    if settings.redis_ssl_ca_certs is None or not (target or "").lower().startswith("rediss://"):
        return {}
    return {"ssl_ca_certs": str(settings.redis_ssl_ca_certs)}
