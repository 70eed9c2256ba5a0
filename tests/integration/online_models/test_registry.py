"""The model registry against a real Redis: signed versions, pruning, champion, and refusals.

Every test has its own Redis namespace (deleted afterwards). The hostile blobs are built byte by
byte: a pickle whose unpickling appends to a marker file, wrapped in the signer's format with a
wrong signature, a signature made with another key, or a valid signature over a header naming
another River version. Loading must refuse each with a clear message and the marker must not exist.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib
from river import linear_model, preprocessing

from feedback_loop.errors import CheckpointIntegrityError, ConfigurationError
from feedback_loop.settings import Settings
from feedback_loop.signing import MAGIC, Signer, library_versions
from online_models.registry import Checkpoint, ModelRegistry

pytestmark = pytest.mark.integration

KEY = "registry-test-signing-key-0123456789"
NOW = 1_800_000_000.0


@pytest.fixture
def make_registry(redis_url: str) -> Iterator[Callable[..., ModelRegistry]]:
    """``make_registry(**settings)``: a registry in a fresh namespace; its keys are deleted afterwards."""
    client = redis_lib.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    namespaces: list[str] = []

    def make(**overrides: Any) -> ModelRegistry:
        values: dict[str, Any] = {"redis_url": redis_url, "redis_namespace": f"reg-{uuid.uuid4().hex[:10]}",
                                  "signing_key": KEY}
        values.update(overrides)
        settings = Settings(**values)
        namespaces.append(settings.redis_namespace)
        return ModelRegistry(client, settings, Signer(settings.signing_key.get_secret_value().encode()))

    yield make
    for namespace in namespaces:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    client.close()


def trained_model(n: int = 200, seed: int = 7) -> Any:
    rng = random.Random(seed)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for _ in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(5, 2)}
        model.learn_one(x, x["a"] + 0.3 * (x["b"] - 5) > 0)
    return model


def probe() -> list[dict[str, float]]:
    rng = random.Random(1)
    return [{"a": rng.gauss(0, 1), "b": rng.gauss(5, 2)} for _ in range(20)]


def blob_key(reg: ModelRegistry, model: str) -> str:
    return reg.settings.key("registry", model, "blob")


def evil_pickle(marker: Path) -> bytes:
    """Pickle opcodes for ``exec("open(marker, 'a').write('ran')")``: unpickling it runs code."""
    code = f"open({str(marker)!r}, 'a').write('ran')".encode()
    return (b"\x80\x04"                              # PROTO 4
            + b"cbuiltins\nexec\n"                   # GLOBAL builtins.exec
            + b"X" + struct.pack("<I", len(code)) + code  # BINUNICODE the source
            + b"\x85"                                # TUPLE1
            + b"R"                                   # REDUCE: exec(source)
            + b".")                                  # STOP


def signed_format(payload: bytes, *, key: bytes | None, header: dict[str, str] | None = None) -> bytes:
    """``payload`` in the signer's format; signed with ``key``, or with 32 wrong bytes when None."""
    head = orjson.dumps(header or library_versions(), option=orjson.OPT_SORT_KEYS)
    body = struct.pack(">I", len(head)) + head + payload
    signature = hmac.new(key, body, hashlib.sha256).digest() if key else bytes(range(32))
    return MAGIC + signature + body


def plant(reg: ModelRegistry, model: str, version: str, blob: bytes, number: int) -> None:
    """Store ``blob`` as the newest version of ``model``, as a hostile writer with Redis access would."""
    r = reg.redis
    r.hset(blob_key(reg, model), version, blob)
    r.hset(reg.settings.key("registry", model, "meta"), version, orjson.dumps({"version": version}))
    r.zadd(reg.settings.key("registry", model, "index"), {version: number})
    r.zadd(reg.settings.key("registry", model, "index", version.rsplit("-", 1)[0]), {version: number})


# ----------------------------------------------------------------------------- round trip
def test_a_river_model_round_trips_with_identical_predictions(make_registry) -> None:
    reg = make_registry()
    model = trained_model()
    first = reg.save("churn", "logreg", model, updates=200, metrics={"accuracy": 0.9}, now=NOW)
    second = reg.save("churn", "logreg", trained_model(300), updates=300, now=NOW + 1)
    assert (first, second) == ("logreg-1", "logreg-2")

    cp = reg.load("churn", first)
    assert isinstance(cp, Checkpoint)
    assert (cp.model, cp.version, cp.name) == ("churn", "logreg-1", "logreg")
    assert [cp.estimator.predict_proba_one(x) for x in probe()] == [model.predict_proba_one(x) for x in probe()]
    assert cp.meta["updates"] == 200 and cp.meta["created_at"] == NOW
    assert cp.meta["metrics"] == {"accuracy": 0.9}
    assert {k: cp.meta[k] for k in ("river", "python")} == library_versions()

    listed = reg.versions("churn")
    assert [m["version"] for m in listed] == ["logreg-2", "logreg-1"]
    assert listed[0]["updates"] == 300 and listed[0]["name"] == "logreg"
    latest, refused = reg.load_latest("churn")
    assert latest is not None and latest.version == "logreg-2" and refused == []


def test_versions_number_per_model_and_latest_by_name(make_registry) -> None:
    reg = make_registry()
    assert reg.save("churn", "logreg", trained_model(10), updates=10) == "logreg-1"
    assert reg.save("churn", "arf20", trained_model(10), updates=10) == "arf20-2"
    assert reg.save("fraud", "logreg", trained_model(10), updates=10) == "logreg-1"
    assert reg.load_latest("churn", "logreg")[0].version == "logreg-1"
    assert reg.load_latest("churn")[0].version == "arf20-2"
    assert reg.load_latest("churn", "hat") == (None, [])
    assert reg.load_latest("nothing") == (None, [])
    assert reg.versions("nothing") == []


def test_a_decoding_client_is_refused(make_registry, redis_url: str) -> None:
    settings = make_registry().settings
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses=False"):
            ModelRegistry(client, settings, Signer(KEY.encode()))
    finally:
        client.close()


# ----------------------------------------------------------------------------- keep
def test_only_the_newest_versions_are_kept_but_never_the_champions(make_registry) -> None:
    reg = make_registry(registry_keep=3)
    model = trained_model(20)
    old = [reg.save("churn", "logreg", model, updates=i) for i in range(2)]
    reg.set_champion("churn", old[1], previous=old[0], reason="promoted", now=NOW)
    other = reg.save("churn", "arf", model, updates=1)
    saved = old + [reg.save("churn", "logreg", model, updates=i) for i in range(2, 3 + 5)]

    kept = [m["version"] for m in reg.versions("churn")]
    assert kept == saved[-3:][::-1] + [other] + old[::-1]
    assert set(reg.redis.hkeys(blob_key(reg, "churn"))) == {v.encode() for v in kept}
    for version in saved[2:-3]:
        with pytest.raises(CheckpointIntegrityError, match=f"churn {version}: unknown version"):
            reg.load("churn", version)
    assert reg.load("churn", old[0]).meta["updates"] == 0

    # Once they are no longer champion or previous champion, old versions go at the next save.
    reg.set_champion("churn", saved[-1], previous=other, reason="promoted", now=NOW + 1)
    newest = reg.save("churn", "logreg", model, updates=99)
    assert [m["version"] for m in reg.versions("churn")] == [newest, saved[-1], saved[-2], other]


# ----------------------------------------------------------------------------- refusals
def test_a_tampered_blob_is_refused_and_the_last_good_version_loads(make_registry, caplog) -> None:
    reg = make_registry()
    model = trained_model()
    good = reg.save("churn", "logreg", model, updates=200)
    bad = reg.save("churn", "logreg", trained_model(300), updates=300)
    blob = bytearray(reg.redis.hget(blob_key(reg, "churn"), bad))
    blob[-10] ^= 0x01
    reg.redis.hset(blob_key(reg, "churn"), bad, bytes(blob))

    with pytest.raises(CheckpointIntegrityError, match=f"churn {bad}: checkpoint signature does not match"):
        reg.load("churn", bad)
    with caplog.at_level(logging.ERROR, logger="online_models.registry"):
        cp, refused = reg.load_latest("churn", "logreg")
    assert cp is not None and cp.version == good
    assert [cp.estimator.predict_one(x) for x in probe()] == [model.predict_one(x) for x in probe()]
    assert len(refused) == 1 and bad in refused[0] and "signature does not match" in refused[0]
    assert any("signature does not match" in r.getMessage() for r in caplog.records)


def test_the_evil_payload_is_live(tmp_path: Path) -> None:
    """Control: the crafted pickle does run code when unpickled without the registry's checks."""
    import pickle

    marker = tmp_path / "control"
    pickle.loads(evil_pickle(marker))  # the point of the control: it runs without the checks
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("variant, message", [
    ("wrong-signature", "signature does not match"),
    ("another-key", "signature does not match"),
    ("another-river", "was written by"),
    ("unsigned", "not a signed feedback-loop blob"),
])
def test_no_code_in_a_refused_payload_runs(make_registry, tmp_path: Path, variant: str, message: str) -> None:
    reg = make_registry()
    model = trained_model(50)
    good = reg.save("churn", "logreg", model, updates=50)
    marker = tmp_path / "pwned"
    payload = evil_pickle(marker)
    blob = {
        "wrong-signature": lambda: signed_format(payload, key=None),
        "another-key": lambda: signed_format(payload, key=b"another-key-another-key-another!"),
        "another-river": lambda: signed_format(payload, key=KEY.encode(),
                                               header={**library_versions(), "river": "0.0.1"}),
        "unsigned": lambda: payload,
    }[variant]()
    plant(reg, "churn", "logreg-99", blob, 99)

    with pytest.raises(CheckpointIntegrityError, match=message) as refused:
        reg.load("churn", "logreg-99")
    assert "churn logreg-99" in str(refused.value)
    cp, messages = reg.load_latest("churn")
    assert cp is not None and cp.version == good
    assert len(messages) == 1 and message in messages[0]
    assert not marker.exists()


def test_a_signed_blob_moved_to_another_slot_is_refused(make_registry) -> None:
    reg = make_registry()
    v1 = reg.save("churn", "logreg", trained_model(20), updates=20)
    copied = reg.redis.hget(blob_key(reg, "churn"), v1)
    plant(reg, "churn", "logreg-50", copied, 50)
    with pytest.raises(CheckpointIntegrityError, match="signed as churn logreg-1"):
        reg.load("churn", "logreg-50")
    plant(reg, "fraud", "logreg-1", copied, 1)
    with pytest.raises(CheckpointIntegrityError, match="signed as churn logreg-1"):
        reg.load("fraud", "logreg-1")
    # Signed with our key and the right versions, but not a registry envelope.
    plant(reg, "churn", "logreg-51", reg.signer.dumps({"something": "else"}), 51)
    with pytest.raises(CheckpointIntegrityError, match="not a registry checkpoint"):
        reg.load("churn", "logreg-51")


def test_missing_and_unknown_versions_are_refused_clearly(make_registry) -> None:
    reg = make_registry()
    v1 = reg.save("churn", "logreg", trained_model(20), updates=20)
    v2 = reg.save("churn", "logreg", trained_model(20), updates=21)
    reg.redis.hdel(blob_key(reg, "churn"), v2)
    with pytest.raises(CheckpointIntegrityError, match=f"churn {v2}: its blob is missing"):
        reg.load("churn", v2)
    with pytest.raises(CheckpointIntegrityError, match="churn logreg-404: unknown version"):
        reg.load("churn", "logreg-404")
    cp, refused = reg.load_latest("churn")
    assert cp.version == v1 and "blob is missing" in refused[0]
    reg.redis.hdel(blob_key(reg, "churn"), v1)
    assert reg.load_latest("churn")[0] is None


# ----------------------------------------------------------------------------- champion
def test_champion_round_trip_including_an_external_version(make_registry) -> None:
    reg = make_registry()
    assert reg.champion("churn") is None
    reg.set_champion("churn", "frozen-5000", previous=None, reason="initial: the producer's model", now=NOW)
    assert reg.champion("churn") == {"version": "frozen-5000", "previous": None, "since": NOW,
                                     "reason": "initial: the producer's model"}
    v1 = reg.save("churn", "arf", trained_model(20), updates=20)
    reg.set_champion("churn", v1, previous="frozen-5000", reason="McNemar p=0.001", now=NOW + 60)
    assert reg.champion("churn") == {"version": v1, "previous": "frozen-5000", "since": NOW + 60,
                                     "reason": "McNemar p=0.001"}
    assert reg.champion("fraud") is None
    reg.redis.set(reg.settings.key("registry", "churn", "champion"), b"{not json")
    with pytest.raises(CheckpointIntegrityError, match="champion record is not valid JSON"):
        reg.champion("churn")
