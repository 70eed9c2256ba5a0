"""The model registry: versioned, signed checkpoints of the online (River) challengers in Redis.

Every challenger of a producer's model is checkpointed as a *registry version* whose id is the
challenger's spec name, a dash and a per-model increasing number (``"arf-17"``). The worker saves
one every ``registry_checkpoint_updates`` updates or ``registry_checkpoint_seconds`` seconds and at
shutdown (that schedule is the worker's; this module only stores and loads), and the registry keeps
the newest ``registry_keep`` versions of each (model, spec name) pair, plus the champion's and the
previous champion's versions whatever their age.

Redis layout
------------
All keys live in the deployment's namespace (:meth:`~feedback_loop.settings.Settings.key`);
``{p}`` stands for ``{namespace}:registry:{model}``:

``{p}:seq``
    Counter (``INCR``) giving the number of the next version of the model.
``{p}:blob``
    Hash ``version -> signed blob`` (:class:`~feedback_loop.signing.Signer` format).
``{p}:meta``
    Hash ``version -> JSON meta`` (an unsigned copy for listings: updates, created_at, river,
    python, metrics, name, version, model).
``{p}:index``
    Sorted set ``version -> number`` of every kept version of the model.
``{p}:index:{name}``
    Sorted set ``version -> number`` of the kept versions of one spec name (for pruning).
``{p}:champion``
    JSON ``{"version", "previous", "since", "reason"}``; the version may be external (a producer's
    own model, such as ``"frozen-5000"``), not stored in the registry.

A version's blob, meta and index entries are written in one ``MULTI``/``EXEC`` transaction
together with the pruning of old versions, under ``WATCH`` of the champion key, so a version is
never half written and the champion's version is never pruned by a concurrent save.

What is signed
--------------
The blob is ``Signer.dumps`` of an envelope ``{"format", "model", "version", "meta", "estimator"}``:
an HMAC-SHA256 (key: ``signing_key`` from settings, never stored in Redis) covers the header with
the River and Python versions and the whole pickled envelope. Loading checks the signature with
:func:`hmac.compare_digest`, then the library versions, and only then unpickles; a blob that is not
in the signed format, whose signature is missing, wrong or does not match its bytes, or that was
written by another River or Python version is refused with
:class:`~feedback_loop.errors.CheckpointIntegrityError` before a single byte of its pickle is
read, so no code in a tampered payload can run. After unpickling, the envelope must name the model
and version it is stored under, so a validly signed blob copied to another slot is refused too.
The meta returned by :meth:`ModelRegistry.load` is the signed copy from the envelope.

The client is a synchronous :class:`redis.Redis` created with ``decode_responses=False`` (blobs are
bytes); the asynchronous worker calls the registry through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from feedback_loop.errors import CheckpointIntegrityError, ConfigurationError
from feedback_loop.settings import Settings
from feedback_loop.signing import Signer, library_versions

logger = logging.getLogger(__name__)

ENVELOPE_FORMAT = "feedback-loop registry checkpoint 1"


@dataclass(frozen=True)
class Checkpoint:
    """One loaded registry version.

    Attributes
    ----------
    model : str
        The producer's model name, e.g. ``"churn"``.
    version : str
        The registry version id, e.g. ``"arf-17"``.
    name : str
        The challenger's spec name, e.g. ``"arf"``.
    estimator : Any
        The River estimator, unpickled only after its signature and versions checked out.
    meta : dict
        The signed meta: ``updates``, ``created_at``, ``river``, ``python``, ``metrics``, ``name``,
        ``version`` and ``model``.
    """

    model: str
    version: str
    name: str
    estimator: Any
    meta: dict


class ModelRegistry:
    """Versioned, signed checkpoints of online models in Redis.

    Parameters
    ----------
    redis : redis.Redis
        Synchronous client with ``decode_responses=False``.
    settings : Settings
        Gives the key namespace and ``registry_keep``.
    signer : Signer
        Signs and verifies the blobs (made from ``settings.signing_key``).

    Raises
    ------
    ConfigurationError
        If the client decodes responses to strings (blobs are bytes).
    """

    def __init__(self, redis: redis.Redis, settings: Settings, signer: Signer) -> None:
        if redis.get_connection_kwargs().get("decode_responses"):
            raise ConfigurationError("the model registry needs a Redis client with decode_responses=False: "
                                     "checkpoints are bytes")
        self.redis = redis
        self.settings = settings
        self.signer = signer

    # ------------------------------------------------------------------ keys
    def _key(self, model: str, *parts: str) -> str:
        return self.settings.key("registry", model, *parts)

    # ------------------------------------------------------------------ writing
    def save(self, model: str, name: str, estimator: Any, *, updates: int, metrics: dict | None = None,
             now: float | None = None, version: str | None = None) -> str:
        """Store a new signed version of the challenger ``name`` of ``model``.

        Parameters
        ----------
        model : str
            The producer's model name.
        name : str
            The challenger's spec name.
        estimator : Any
            The (picklable) River estimator.
        updates : int
            How many updates (``learn_one`` calls) the estimator has seen.
        metrics : dict, optional
            JSON-serialisable metrics to keep with the version.
        now : float, optional
            Wall-clock time of the checkpoint (default: :func:`time.time`).
        version : str, optional
            The version id to use (the learners name versions ``<name>-u<updates>``, so a replayed
            batch writes the same version again); default ``f"{name}-{number}"``.

        Returns
        -------
        str
            The version id.
        """
        if not model or not name:
            raise ValueError(f"model and spec name must be non-empty (got model={model!r}, name={name!r})")
        if updates < 0:
            raise ValueError(f"updates must be >= 0 (got {updates})")
        number = int(self.redis.incr(self._key(model, "seq")))
        version = version or f"{name}-{number}"
        meta = {"model": model, "name": name, "version": version, "updates": int(updates),
                "created_at": time.time() if now is None else float(now), "metrics": dict(metrics or {}),
                **library_versions()}
        meta_json = orjson.dumps(meta)  # fails here, before anything is written, if metrics are not JSON
        blob = self.signer.dumps({"format": ENVELOPE_FORMAT, "model": model, "version": version, "meta": meta,
                                  "estimator": estimator})
        champion_key = self._key(model, "champion")
        name_index = self._key(model, "index", name)
        keep = self.settings.registry_keep

        def write(pipe: redis.client.Pipeline) -> None:
            protected = {version}
            champion = _champion_from(pipe.get(champion_key))
            if champion is not None:
                protected.update(v for v in (champion["version"], champion.get("previous")) if v)
            kept = [(_text(member), score) for member, score in pipe.zrange(name_index, 0, -1, withscores=True)]
            ordered = [v for v, _ in sorted(kept + [(version, float(number))], key=lambda item: item[1])]
            drop = [v for v in ordered[:-keep] if v not in protected]
            pipe.multi()
            pipe.hset(self._key(model, "blob"), version, blob)
            pipe.hset(self._key(model, "meta"), version, meta_json)
            pipe.zadd(self._key(model, "index"), {version: number})
            pipe.zadd(name_index, {version: number})
            if drop:
                pipe.hdel(self._key(model, "blob"), *drop)
                pipe.hdel(self._key(model, "meta"), *drop)
                pipe.zrem(self._key(model, "index"), *drop)
                pipe.zrem(name_index, *drop)

        self.redis.transaction(write, champion_key, name_index)
        return version

    def set_champion(self, model: str, version: str, *, previous: str | None, reason: str,
                     now: float | None = None) -> None:
        """Record ``version`` as the champion of ``model``.

        Parameters
        ----------
        model : str
            The producer's model name.
        version : str
            A registry version id or an external one (a producer's own model, e.g. ``"frozen-5000"``).
        previous : str or None
            The champion it replaces; kept by the registry's pruning too.
        reason : str
            Why (e.g. the promotion test's result, or ``"rollback"``).
        now : float, optional
            Wall-clock time of the change (default: :func:`time.time`).
        """
        record = {"version": version, "previous": previous, "since": time.time() if now is None else float(now),
                  "reason": reason}
        self.redis.set(self._key(model, "champion"), orjson.dumps(record))

    # ------------------------------------------------------------------ reading
    def champion(self, model: str) -> dict | None:
        """The champion record of ``model`` (``version``, ``previous``, ``since``, ``reason``), or None."""
        return _champion_from(self.redis.get(self._key(model, "champion")))

    def versions(self, model: str) -> list[dict]:
        """The meta of every kept version of ``model``, newest first; nothing is unpickled.

        This is the unsigned copy kept for listings: trust only the meta of :meth:`load`. A version
        whose meta is missing or unreadable is listed as ``{"version": ..., "error": ...}``.
        """
        kept = [_text(v) for v in self.redis.zrevrange(self._key(model, "index"), 0, -1)]
        if not kept:
            return []
        listed = []
        for version, raw in zip(kept, self.redis.hmget(self._key(model, "meta"), kept), strict=True):
            if raw is None:
                listed.append({"version": version, "error": "meta is missing"})
                continue
            try:
                listed.append(orjson.loads(raw))
            except orjson.JSONDecodeError as exc:
                logger.error("registry meta of %s %s is not valid JSON: %s", model, version, exc)
                listed.append({"version": version, "error": f"meta is not valid JSON: {exc}"})
        return listed

    def load(self, model: str, version: str) -> Checkpoint:
        """Load and verify one version.

        Raises
        ------
        CheckpointIntegrityError
            The version is unknown or its blob missing; the blob is unsigned, its signature missing,
            wrong or not matching its bytes; it was written by another River or Python version; or it
            was signed for another model or version. The message names the model and the version.
        """
        where = f"registry checkpoint {model} {version}"
        blob = self.redis.hget(self._key(model, "blob"), version)
        if blob is None:
            if self.redis.zscore(self._key(model, "index"), version) is None:
                raise CheckpointIntegrityError(f"{where}: unknown version (not in the registry, or pruned)")
            raise CheckpointIntegrityError(f"{where}: its blob is missing from Redis")
        try:
            envelope = self.signer.loads(bytes(blob))
        except CheckpointIntegrityError as exc:
            raise CheckpointIntegrityError(f"{where}: {exc}") from exc
        if not isinstance(envelope, dict) or envelope.get("format") != ENVELOPE_FORMAT:
            raise CheckpointIntegrityError(f"{where}: the signed blob is not a registry checkpoint")
        if (envelope.get("model"), envelope.get("version")) != (model, version):
            raise CheckpointIntegrityError(
                f"{where}: the blob was signed as {envelope.get('model')} {envelope.get('version')}; "
                "refusing a checkpoint copied to another slot")
        meta = envelope["meta"]
        return Checkpoint(model=model, version=version, name=meta["name"], estimator=envelope["estimator"],
                          meta=meta)

    def load_latest(self, model: str, name: str | None = None) -> tuple[Checkpoint | None, list[str]]:
        """The newest version of ``model`` (of spec ``name``, if given) that loads.

        Refused versions are skipped, each logged with :func:`logging.error`.

        Returns
        -------
        tuple of (Checkpoint or None, list of str)
            The checkpoint (None if no version loads) and the messages of the refused newer versions.
        """
        index = self._key(model, "index") if name is None else self._key(model, "index", name)
        refused: list[str] = []
        for member in self.redis.zrevrange(index, 0, -1):
            version = _text(member)
            try:
                return self.load(model, version), refused
            except CheckpointIntegrityError as exc:
                logger.error("%s; falling back to an older version", exc)
                refused.append(str(exc))
        return None, refused


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _champion_from(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CheckpointIntegrityError(f"the champion record is not valid JSON ({exc}): fix or delete it") from exc
    if not isinstance(record, dict) or not isinstance(record.get("version"), str):
        raise CheckpointIntegrityError(f"the champion record has no version: {record!r}")
    return record
