"""Signed pickles: nothing unsigned, tampered or foreign is ever unpickled."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from feedback_loop.errors import CheckpointIntegrityError, ConfigurationError
from feedback_loop.signing import MAGIC, Signer

KEY = b"0123456789abcdef0123456789abcdef"


class Boom:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_round_trip():
    signer = Signer(KEY)
    assert signer.loads(signer.dumps({"x": [1, 2]})) == {"x": [1, 2]}


def test_a_payload_signed_with_another_key_never_runs(tmp_path: Path):
    marker = tmp_path / "ran"
    evil = Signer(b"another-key-another-key-another!").dumps(Boom(str(marker)))
    with pytest.raises(CheckpointIntegrityError, match="signature does not match"):
        Signer(KEY).loads(evil)
    assert not marker.exists()


def test_tampered_bytes_never_run(tmp_path: Path):
    marker = tmp_path / "ran"
    signer = Signer(KEY)
    good = signer.dumps({"benign": True})
    payload = pickle.dumps(Boom(str(marker)))
    header_end = len(MAGIC) + 32 + 4 + int.from_bytes(good[len(MAGIC) + 32:len(MAGIC) + 36], "big")
    with pytest.raises(CheckpointIntegrityError):
        signer.loads(good[:header_end] + payload)
    with pytest.raises(CheckpointIntegrityError, match="not a signed"):
        signer.loads(payload)
    assert not marker.exists()


def test_other_library_versions_are_refused(monkeypatch):
    signer = Signer(KEY)
    blob = signer.dumps([1])
    monkeypatch.setattr("feedback_loop.signing.library_versions", lambda: {"python": "0", "river": "0"})
    with pytest.raises(CheckpointIntegrityError, match="written by"):
        signer.loads(blob)


def test_short_keys_are_a_configuration_error():
    with pytest.raises(ConfigurationError, match="FEEDBACK_LOOP_SIGNING_KEY"):
        Signer(b"short")
