"""The reviewer's side of the HTTP API: pages, login, the review queue and verdicts.

Routes
------
``GET /``                         the dashboard page
``GET /review``                   the reviewer page, or the login form when not logged in
``POST /review/login``            form ``token`` (+ the form's CSRF field): sets the session cookie
``POST /review/logout``           ends the session
``POST /api/review/next``         claims the next item for the reviewer (a lease), ``{"item": ...}``
``POST /api/review/{id}``         a verdict ``{"verdict", "corrected_label"?, "note"?}``: publishes a
                                  ReviewFlag, the reviewer's name stamped by the server
``GET /api/review/queue``         pending items, highest priority first (``?limit=N``)
``GET /api/review/history``       the reviewer's verdicts, newest first
``GET /api/review/stats``         queue depth, verdicts, throughput (no login needed: counts only)
``GET /static/{name}``            the pages' assets, shipped in the package

Every route that reads items or writes needs a reviewer (see :mod:`feedback_loop.webauth`);
malformed requests get a 4xx with ``{"error": ...}`` and publish nothing.
"""

from __future__ import annotations

import html
import secrets
import time
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web
from pydantic import ValidationError

from consumers.review_queue import ReviewQueue
from feedback_loop.errors import ReviewConflictError
from feedback_loop.events import ReviewFlag
from feedback_loop.webauth import (CSRF_HEADER, LOGIN_CSRF_COOKIE, SESSION_COOKIE, Authenticator)

AUTH = web.AppKey("auth", Authenticator)
QUEUE = web.AppKey("review_queue", ReviewQueue)
PUBLISH = web.AppKey("publish_flag", Callable[[ReviewFlag], Awaitable[None]])

STATIC_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
MAX_NOTE = 2000
MAX_ID = 512
Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _asset(name: str) -> str:
    return (resources.files("feedback_loop") / "static" / name).read_text(encoding="utf-8")


def _page(name: str, status: int = 200, **values: str) -> web.Response:
    text = _asset(name)
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return web.Response(text=text, status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


def reviewer_of(request: web.Request, write: bool) -> tuple[str | None, web.Response | None]:
    """The authenticated reviewer, or the 401/403 response to send instead."""
    auth: Authenticator = request.app[AUTH]
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, _error(401, "use 'Authorization: Bearer <reviewer token>'")
        name = auth.reviewer_for_token(token.strip())
        if name is None:
            return None, _error(403, "this reviewer token is not valid; ask for a token in reviewer_tokens")
        return name, None
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        return None, _error(401, "log in at /review, or send 'Authorization: Bearer <reviewer token>'")
    session = auth.read_session(cookie, time.time())
    if session is None:
        return None, _error(403, "your session is not valid or has expired; log in again at /review")
    if write and not auth.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return None, _error(403, f"missing or wrong {CSRF_HEADER} header; reload the review page")
    return session.reviewer, None


def needs_reviewer(write: bool) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            reviewer, refusal = reviewer_of(request, write)
            if refusal is not None:
                return refusal
            assert reviewer is not None
            return await handler(request, reviewer)
        return route
    return wrap


async def dashboard(request: web.Request) -> web.Response:
    return _page("dashboard.html")


def _login_page(error: str, status: int) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    response = _page("login.html", status, error=error, login_csrf=nonce)
    response.set_cookie(LOGIN_CSRF_COOKIE, nonce, httponly=True, samesite="Strict", path="/review")
    return response


async def review_page(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    session = auth.read_session(request.cookies.get(SESSION_COOKIE), time.time())
    if session is None:
        hint = "" if auth.enabled else "No reviewer tokens are configured (setting reviewer_tokens)."
        return _login_page(hint, 200)
    return _page("review.html", reviewer=session.reviewer, csrf_token=auth.csrf_token(session))


async def login(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    form = await request.post()
    field, cookie = form.get("csrf_token"), request.cookies.get(LOGIN_CSRF_COOKIE)
    if not isinstance(field, str) or not cookie or not secrets.compare_digest(field, cookie):
        return _login_page("The login form expired; please try again.", 403)
    token = form.get("token")
    if not isinstance(token, str) or not token.strip():
        return _login_page("Enter your reviewer token.", 401)
    reviewer = auth.reviewer_for_token(token.strip())
    if reviewer is None:
        return _login_page("That token is not valid.", 403)
    response = web.HTTPSeeOther("/review")
    response.set_cookie(SESSION_COOKIE, auth.make_session(reviewer, time.time()), httponly=True,
                        samesite="Strict", path="/", max_age=int(auth.session_seconds))
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/review")
    raise response


@needs_reviewer(write=True)
async def logout(request: web.Request, reviewer: str) -> web.Response:
    response = _json({"status": "logged out", "reviewer": reviewer})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


@needs_reviewer(write=True)
async def claim_next(request: web.Request, reviewer: str) -> web.Response:
    item = await request.app[QUEUE].claim(reviewer, time.time())
    return _json({"item": item})


def parse_verdict(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The verdict body as ReviewFlag fields, or ``None`` and why it is refused.

    >>> parse_verdict(b'{"verdict": "error", "corrected_label": "no"}')
    ({'verdict': 'error', 'corrected_label': 'no', 'note': None}, '')
    >>> parse_verdict(b'{"verdict": "maybe"}')[1]
    'verdict must be "error" or "correct"'
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, "the body must be a JSON object"
    if not isinstance(body, dict):
        return None, "the body must be a JSON object"
    unknown = sorted(set(body) - {"verdict", "corrected_label", "note"})
    if unknown:
        return None, f"unknown fields {unknown}; allowed: verdict, corrected_label, note"
    verdict = body.get("verdict")
    if verdict not in ("error", "correct"):
        return None, 'verdict must be "error" or "correct"'
    label = body.get("corrected_label")
    if isinstance(label, str):
        label = label.strip() or None
    if label is not None and not isinstance(label, (str, int, float, bool)):
        return None, "corrected_label must be a string, number or boolean"
    if label is not None and verdict == "correct":
        return None, "a corrected_label goes with verdict \"error\" only"
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        return None, f"note must be text of at most {MAX_NOTE} characters"
    return {"verdict": verdict, "corrected_label": label, "note": note or None}, ""


@needs_reviewer(write=True)
async def post_verdict(request: web.Request, reviewer: str) -> web.Response:
    pid = request.match_info["prediction_id"]
    if not pid or len(pid) > MAX_ID:
        return _error(400, f"prediction_id must be 1 to {MAX_ID} characters")
    fields, problem = parse_verdict(await request.read())
    if fields is None:
        return _error(400, problem)
    try:
        flag = ReviewFlag(prediction_id=pid, reviewer=reviewer, timestamp=datetime.now(timezone.utc), **fields)
    except ValidationError as exc:
        return _error(400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    queue = request.app[QUEUE]
    try:
        await queue.record_verdict(pid, reviewer, flag.verdict, flag.corrected_label, flag.note, time.time())
    except ReviewConflictError as exc:
        return _error(409, str(exc))
    try:
        await request.app[PUBLISH](flag)
    except Exception as exc:  # noqa: BLE001 - any publish failure: undo, tell the reviewer to retry
        await queue.undo_verdict(pid)
        return _error(503, f"could not publish the verdict to Kafka ({exc}); try again")
    return _json({"status": "published", "flag": orjson.loads(flag.to_json())})


def _limit(request: web.Request, default: int) -> int | None:
    try:
        value = int(request.query.get("limit", str(default)))
    except ValueError:
        return None
    return value if 1 <= value <= 1000 else None


@needs_reviewer(write=False)
async def queue_items(request: web.Request, reviewer: str) -> web.Response:
    limit = _limit(request, 100)
    if limit is None:
        return _error(400, "limit must be an integer from 1 to 1000")
    return _json(await request.app[QUEUE].pending(limit, time.time()))


@needs_reviewer(write=False)
async def history(request: web.Request, reviewer: str) -> web.Response:
    limit = _limit(request, 20)
    if limit is None:
        return _error(400, "limit must be an integer from 1 to 1000")
    return _json(await request.app[QUEUE].history(reviewer, limit))


async def stats(request: web.Request) -> web.Response:
    return _json(await request.app[QUEUE].stats(time.time()))


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind("."):] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        raise web.HTTPNotFound(text=f"no asset {name!r}")
    try:
        text = _asset(name)
    except FileNotFoundError:
        raise web.HTTPNotFound(text=f"no asset {name!r}") from None
    return web.Response(text=text, content_type=STATIC_TYPES[suffix], headers={"Cache-Control": "no-cache"})


async def no_icon(request: web.Request) -> web.Response:
    """No icon: 204 keeps the browsers' console free of 404s."""
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", dashboard)
    app.router.add_get("/review", review_page)
    app.router.add_post("/review/login", login)
    app.router.add_post("/review/logout", logout)
    app.router.add_post("/api/review/next", claim_next)
    app.router.add_get("/api/review/queue", queue_items)
    app.router.add_get("/api/review/history", history)
    app.router.add_get("/api/review/stats", stats)
    app.router.add_post("/api/review/{prediction_id}", post_verdict)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/favicon.ico", no_icon)
