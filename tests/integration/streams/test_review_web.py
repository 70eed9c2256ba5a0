"""The reviewer routes of the HTTP API on a real Redis and Kafka: authentication and CSRF on every
write route, malformed verdicts refused with a 4xx and nothing published, a good verdict
published as a ReviewFlag stamped with the reviewer's name, one verdict per item."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any

import pytest

from consumers.review_queue import ReviewQueue
from e2e_worker import TopicReader, create_topics
from feedback_loop.events import ReviewRequest

TOKENS = {"ana": "ana-token-123", "bo": "bo-token-456"}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def call(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def set_cookies(url: str, method: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """Like :func:`call` but returns every Set-Cookie (urllib folds repeated headers)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        resp = opener.open(request, timeout=30)
    except urllib.error.HTTPError as exc:
        resp = exc
    jar = {}
    for value in resp.headers.get_all("Set-Cookie") or []:
        key, _, rest = value.partition("=")
        jar[key] = rest.split(";", 1)[0]
    return resp.status, jar, resp.read()


@pytest.fixture
def web(make_settings, web_factory):
    settings = make_settings(reviewer_tokens=TOKENS)
    create_topics(settings)
    return settings, web_factory(settings)


def login(url: str, token: str) -> tuple[str, str]:
    """Log in through the form; return the session cookie and the page's CSRF token."""
    status, jar, page = set_cookies(url + "/review", "GET", None, {})
    assert status == 200 and b'id="login-token"' in page
    form_csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
    body = urllib.parse.urlencode({"token": token, "csrf_token": form_csrf}).encode()
    status, jar2, _ = set_cookies(url + "/review/login", "POST", body, {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"fl_login_csrf={jar['fl_login_csrf']}"})
    assert status == 303, status
    session = jar2["fl_session"]
    status, _, page = call(url + "/review", headers={"Cookie": f"fl_session={session}"})
    assert status == 200 and b'id="reviewer-name">ana<' in page
    csrf = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
    return session, csrf


def offer(settings, pid: str, priority: float) -> None:
    import asyncio
    from redis.asyncio import Redis

    async def go() -> None:
        client = Redis.from_url(settings.redis_url)
        try:
            request = ReviewRequest(prediction_id=pid, model="m", model_version="1", reason="learned",
                                    priority=priority, prediction="yes", features={"f": 1.0},
                                    scores={"yes": 0.6, "no": 0.4}, requested_at=datetime.now(timezone.utc))
            assert await ReviewQueue(client, settings).offer(request, time.time()) == "queued"
        finally:
            await client.aclose()

    asyncio.run(go())


WRITE_ROUTES = ["/api/review/next", "/api/review/p-1", "/review/logout"]


@pytest.mark.parametrize("path", WRITE_ROUTES)
def test_write_routes_refuse_without_credentials_or_csrf(web, path):
    settings, server = web
    body = b'{"verdict": "correct"}'
    assert call(server.url + path, "POST", body)[0] == 401
    assert call(server.url + path, "POST", body, {"Authorization": "Bearer wrong"})[0] == 403
    assert call(server.url + path, "POST", body, {"Authorization": "Basic abc"})[0] == 401
    session, csrf = login(server.url, TOKENS["ana"])
    cookie = {"Cookie": f"fl_session={session}"}
    assert call(server.url + path, "POST", body, cookie)[0] == 403  # no CSRF header
    assert call(server.url + path, "POST", body, {**cookie, "X-CSRF-Token": "forged"})[0] == 403
    forged = session[:-3] + ("AAA" if not session.endswith("AAA") else "BBB")
    assert call(server.url + path, "POST", body, {"Cookie": f"fl_session={forged}", "X-CSRF-Token": csrf})[0] == 403
    status, _, reply = call(server.url + path, "POST", body, {**cookie, "X-CSRF-Token": csrf})
    assert status == 200, reply
    status, _, reply = call(server.url + path.replace("p-1", "p-2"), "POST", body,
                            {"Authorization": f"Bearer {TOKENS['bo']}"})
    assert status == 200, reply


def test_login_route_checks_form_csrf_and_token(web):
    settings, server = web
    status, jar, page = set_cookies(server.url + "/review", "GET", None, {})
    form_csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
    form = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"fl_login_csrf={jar['fl_login_csrf']}"}

    def post(fields: dict[str, str], headers: dict[str, str]) -> int:
        return call(server.url + "/review/login", "POST", urllib.parse.urlencode(fields).encode(), headers)[0]

    assert post({"token": TOKENS["ana"], "csrf_token": form_csrf}, {"Content-Type": form["Content-Type"]}) == 403
    assert post({"token": TOKENS["ana"], "csrf_token": "other"}, form) == 403
    assert post({"csrf_token": form_csrf}, form) == 401
    assert post({"token": "nope", "csrf_token": form_csrf}, form) == 403
    assert post({"token": TOKENS["ana"], "csrf_token": form_csrf}, form) == 303


def test_reader_routes_need_a_reviewer(web):
    settings, server = web
    for path in ("/api/review/queue", "/api/review/history"):
        assert call(server.url + path)[0] == 401
        assert call(server.url + path, headers={"Authorization": "Bearer wrong"})[0] == 403
        assert call(server.url + path, headers={"Authorization": f"Bearer {TOKENS['ana']}"})[0] == 200
    assert call(server.url + "/api/review/stats")[0] == 200
    assert call(server.url + "/")[0] == 200
    assert call(server.url + "/static/dashboard.js")[0] == 200
    assert call(server.url + "/static/..%2fweb.py")[0] == 404


MALFORMED = [
    b"not json", b"[]", b'{"verdict": "maybe"}', b'{"verdict": "error", "extra": 1}',
    b'{"verdict": "error", "corrected_label": {"a": 1}}', b'{"verdict": "correct", "corrected_label": "no"}',
    b'{"verdict": "error", "note": 5}', json.dumps({"verdict": "error", "note": "x" * 2001}).encode(), b"",
]


def test_malformed_verdicts_get_400_and_publish_nothing_then_one_verdict_is_published(web):
    settings, server = web
    auth = {"Authorization": f"Bearer {TOKENS['ana']}", "Content-Type": "application/json"}
    for body in MALFORMED:
        status, _, reply = call(server.url + "/api/review/p-7", "POST", body, auth)
        assert status == 400, (body, status, reply)
        assert json.loads(reply)["error"]
    status, _, reply = call(server.url + "/api/review/" + "x" * 600, "POST", b'{"verdict": "error"}', auth)
    assert status == 400
    offer(settings, "p-7", 0.9)
    status, _, reply = call(server.url + "/api/review/p-7", "POST",
                            b'{"verdict": "error", "corrected_label": "no", "note": "checked"}', auth)
    assert status == 200, reply
    flag = json.loads(reply)["flag"]
    assert (flag["prediction_id"], flag["reviewer"], flag["verdict"], flag["corrected_label"], flag["note"]) == (
        "p-7", "ana", "error", "no", "checked")
    status, _, reply = call(server.url + "/api/review/p-7", "POST", b'{"verdict": "correct"}',
                            {"Authorization": f"Bearer {TOKENS['bo']}"})
    assert status == 409 and b"ana" in reply
    reader = TopicReader(settings, "review-flags")
    try:
        reader.catch_up()
        flags = [json.loads(r.value) for r in reader.records]
        assert [(f["prediction_id"], f["reviewer"], f["verdict"]) for f in flags] == [("p-7", "ana", "error")]
        assert reader.records[0].key == b"p-7"
    finally:
        reader.close()
    queue = call(server.url + "/api/review/queue", headers=auth)
    assert json.loads(queue[2]) == []
    stats = json.loads(call(server.url + "/api/review/stats")[2])
    assert stats["verdicts"] == 1 and stats["errors_found"] == 1 and stats["per_reviewer"] == {"ana": 1}
    history = json.loads(call(server.url + "/api/review/history", headers=auth)[2])
    assert [h["prediction_id"] for h in history] == ["p-7"]


def test_next_claims_the_highest_priority_and_keeps_it_for_the_reviewer(web):
    settings, server = web
    offer(settings, "low", 0.2)
    offer(settings, "high", 0.8)
    ana = {"Authorization": f"Bearer {TOKENS['ana']}"}
    bo = {"Authorization": f"Bearer {TOKENS['bo']}"}
    first = json.loads(call(server.url + "/api/review/next", "POST", b"", ana)[2])["item"]
    again = json.loads(call(server.url + "/api/review/next", "POST", b"", ana)[2])["item"]
    other = json.loads(call(server.url + "/api/review/next", "POST", b"", bo)[2])["item"]
    assert (first["prediction_id"], again["prediction_id"], other["prediction_id"]) == ("high", "high", "low")
    assert first["claimed_by"] == "ana" and first["features"] == {"f": 1.0}
    assert json.loads(call(server.url + "/api/review/next", "POST", b"", {"Authorization": "Bearer " + TOKENS["bo"]})[2])["item"]["prediction_id"] == "low"
