"""Signed pickles: Python objects (River models and detectors) stored in Redis and loaded back
only when an HMAC-SHA256 made with our secret proves we wrote them.

Unpickling runs code, so nothing is unpickled before its signature checks out
(:func:`hmac.compare_digest`); the header (library versions) is signed too, and a blob written by
another River or Python version is refused rather than loaded into subtly different classes.
The key comes from settings and is never stored beside the data.

Examples
--------
>>> signer = Signer(b"k" * 32)
>>> blob = signer.dumps({"a": 1})
>>> signer.loads(blob)
{'a': 1}
>>> tampered = blob[:-1] + bytes([blob[-1] ^ 1])
>>> signer.loads(tampered)
Traceback (most recent call last):
...
feedback_loop.errors.CheckpointIntegrityError: checkpoint signature does not match: refusing to load it (tampered with, or signed with another FEEDBACK_LOOP_SIGNING_KEY)
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import platform
import struct
from typing import Any

import orjson

from feedback_loop.errors import CheckpointIntegrityError, ConfigurationError

MAGIC = b"FLS1"
_SIG = hashlib.sha256().digest_size


def library_versions() -> dict[str, str]:
    """The versions a pickle depends on."""
    import river

    return {"python": platform.python_version(), "river": river.__version__}


class Signer:
    """Signs and verifies pickled objects with HMAC-SHA256 under ``key``."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ConfigurationError("signing_key (FEEDBACK_LOOP_SIGNING_KEY) must be at least 16 bytes; "
                                     "make one with `python -c 'import secrets; print(secrets.token_hex(32))'`")
        self._key = key

    def dumps(self, obj: Any) -> bytes:
        header = orjson.dumps(library_versions(), option=orjson.OPT_SORT_KEYS)
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        body = struct.pack(">I", len(header)) + header + payload
        return MAGIC + hmac.new(self._key, body, hashlib.sha256).digest() + body

    def loads(self, blob: bytes) -> Any:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _SIG + 4:
            raise CheckpointIntegrityError("checkpoint is not a signed feedback-loop blob: refusing to load it")
        sig, body = blob[len(MAGIC):len(MAGIC) + _SIG], blob[len(MAGIC) + _SIG:]
        if not hmac.compare_digest(sig, hmac.new(self._key, body, hashlib.sha256).digest()):
            raise CheckpointIntegrityError(
                "checkpoint signature does not match: refusing to load it (tampered with, or signed "
                "with another FEEDBACK_LOOP_SIGNING_KEY)")
        (size,) = struct.unpack(">I", body[:4])
        written = orjson.loads(body[4:4 + size])
        current = library_versions()
        if written != current:
            raise CheckpointIntegrityError(
                f"checkpoint was written by {written}, this process runs {current}: refusing to load it")
        return pickle.loads(body[4 + size:])  # noqa: S301 - signature verified above
