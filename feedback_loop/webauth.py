"""Reviewer authentication for the HTTP API: tokens, signed session cookies and CSRF tokens.

Two ways in, both resolving to a reviewer name from ``Settings.reviewer_tokens``:

* ``Authorization: Bearer <token>`` for scripts: no cookie, so no cross-site request can carry it,
  and no CSRF token is needed;
* the reviewer page: ``POST /review/login`` with the token sets an HttpOnly, SameSite=Strict
  session cookie signed with HMAC-SHA256; every POST made with that cookie must carry the
  session's CSRF token in the ``X-CSRF-Token`` header (the page gets it in a ``<meta>`` tag).
  The login form itself carries a double-submit token (cookie + hidden field).

No credentials at all is 401; a wrong token, a forged or expired session, or a missing or wrong
CSRF token is 403. A session names the digest of the token it was made with, so changing a
reviewer's token ends their sessions.

Examples
--------
>>> auth = Authenticator({"ana": "s3cret"}, secret=b"k" * 32, session_seconds=60)
>>> auth.reviewer_for_token("s3cret"), auth.reviewer_for_token("nope")
('ana', None)
>>> cookie = auth.make_session("ana", now=1000.0)
>>> session = auth.read_session(cookie, now=1001.0)
>>> session.reviewer, auth.csrf_ok(session, auth.csrf_token(session)), auth.csrf_ok(session, "x")
('ana', True, False)
>>> auth.read_session(cookie, now=2000.0) is None   # expired
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Mapping

import orjson

SESSION_COOKIE = "fl_session"
LOGIN_CSRF_COOKIE = "fl_login_csrf"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Session:
    reviewer: str
    expires: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Checks reviewer tokens and makes / verifies sessions and CSRF tokens (see module doc)."""

    def __init__(self, tokens: Mapping[str, str], secret: bytes, session_seconds: float) -> None:
        self._tokens = dict(tokens)
        self._secret = secret
        self.session_seconds = session_seconds

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def reviewer_for_token(self, token: str) -> str | None:
        """The reviewer whose token this is (constant-time comparison against each), else ``None``."""
        found = None
        for name, expected in self._tokens.items():
            if hmac.compare_digest(token.encode(), expected.encode()):
                found = name
        return found

    def _mac(self, *parts: str) -> str:
        return _b64(hmac.new(self._secret, "\x1f".join(parts).encode(), hashlib.sha256).digest())

    def _token_digest(self, reviewer: str) -> str:
        return self._mac("token", reviewer, self._tokens.get(reviewer, ""))[:16]

    def make_session(self, reviewer: str, now: float) -> str:
        """A signed cookie value for ``reviewer``, valid ``session_seconds`` from ``now``."""
        body = _b64(orjson.dumps({"r": reviewer, "e": now + self.session_seconds,
                                  "n": secrets.token_urlsafe(12), "t": self._token_digest(reviewer)}))
        return f"{body}.{self._mac('session', body)}"

    def read_session(self, cookie: str | None, now: float) -> Session | None:
        """The session in ``cookie`` if its signature, expiry and token digest check out."""
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        try:
            data = orjson.loads(_unb64(body))
            reviewer, expires, nonce, digest = data["r"], float(data["e"]), data["n"], data["t"]
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return None
        if expires <= now or reviewer not in self._tokens:
            return None
        if not hmac.compare_digest(digest, self._token_digest(reviewer)):
            return None
        return Session(reviewer, expires, nonce)

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(session))
