"""Routes, auth middleware and handlers of the status page.

Access classes: *open* (health probes, login, static files, /metrics unless configured
otherwise), *read* (pages, media, GET /api/*: a session, the bearer token, or
``public_readonly``), *write* (every other POST: a session plus its CSRF token, or the bearer
token). Anything refused changes nothing and says why in JSON (or redirects a browser to the
login page).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from aiohttp import web

from spyoncino.helpers import updates
from spyoncino.schemas.control import ConfigSnapshot

from . import _home as home
from . import _pages as pages
from . import _views as views
from ._auth import Session, tokens_equal
from ._metrics import CONTENT_TYPE
from ._store import EventQuery, get_event, labels_in_index, merge, query_index, resolve_media

if TYPE_CHECKING:
    from . import StatusPage

PAGE: web.AppKey[StatusPage] = web.AppKey("page")
SESSION_COOKIE = "spyoncino_session"
LOGIN_COOKIE = "spyoncino_login"
CSRF_HEADER = "X-CSRF-Token"
Access = Literal["open", "read", "write"]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
}


STATIC_FILES = frozenset({"app.js", "style.css", "zones.js", "setup.js", "timeline.js"})
OPEN_ROUTES = frozenset({"/health/live", "/health/ready", "/login", "/static/{name}"})
#: the range of ``?day=`` (a later or earlier day has no Unix time here)
MIN_YEAR, MAX_YEAR = 1970, 2999


def _access(request: web.Request, metrics_public: bool) -> Access:
    # decided on the route that matched, never on a path prefix ("/static/../api/arm")
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    if route in OPEN_ROUTES:
        return "open"
    if route == "/metrics":
        return "open" if metrics_public else "read"
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    return "write"


def _deny(request: web.Request, status: int, reason: str) -> web.Response:
    wants_html = request.method == "GET" and "text/html" in request.headers.get("Accept", "")
    if status == 401 and wants_html and not request.path.startswith(("/api/", "/media/")):
        target = (
            "/login" if request.path == "/" else "/login?next=" + quote(request.path_qs, safe="")
        )
        raise web.HTTPSeeOther(target)
    return web.json_response({"ok": False, "error": reason}, status=status)


@dataclass(frozen=True)
class Who:
    """Who is asking: ``principal`` is ``token``, ``session`` or None (anonymous)."""

    principal: Literal["token", "session"] | None = None
    session: Session | None = None


#: Set by the middleware for the request's task (handlers run in it); no request storage
#: needed, so no aiohttp version question.
ANONYMOUS = Who()
_WHO: ContextVar[Who] = ContextVar("status_page_who", default=ANONYMOUS)


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    page: StatusPage = request.app[PAGE]
    page.requests += 1
    cfg = page.cfg
    who = ANONYMOUS
    access = _access(request, cfg.metrics_open)
    auth = request.headers.get("Authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        expected = cfg.api_token.get_secret_value() if cfg.api_token else None
        if scheme.lower() == "bearer" and expected and tokens_equal(token.strip(), expected):
            who = Who("token")
        elif access != "open":  # an open route does not care about a bad header
            return _deny(request, 401, "invalid bearer token")
    else:
        session = page.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            who = Who("session", session)
    _WHO.set(who)  # before any check: nothing of an earlier request on this connection stays
    if access == "read" and who.principal is None and not cfg.public_readonly:
        return _deny(request, 401, "login required")
    if access == "write":
        if who.principal is None:
            return _deny(request, 401, "login or bearer token required")
        if who.session is not None and not await _csrf_ok(request, who.session):
            return _deny(request, 403, "missing or wrong CSRF token")
    response: web.StreamResponse = await handler(request)
    return response


async def _form(request: web.Request) -> Any:
    """The request's form; a malformed body (multipart without a boundary, a broken part) is
    the client's error, a 400, never a 500."""
    try:
        return await request.post()
    except (ValueError, AssertionError, UnicodeDecodeError, LookupError) as e:
        raise web.HTTPBadRequest(text="malformed form body") from e


async def _csrf_ok(request: web.Request, session: Session) -> bool:
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await _form(request)
        value = form.get("csrf_token")
        token = value if isinstance(value, str) else None
    return token is not None and tokens_equal(token, session.csrf)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if request.path.startswith(("/api/", "/login")) or response.content_type == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")


def _page(request: web.Request) -> StatusPage:
    return request.app[PAGE]


def _who(request: web.Request) -> str:
    return "api" if _WHO.get().principal == "token" else "web"


def _can_write(request: web.Request) -> bool:
    return _WHO.get().principal is not None


def _csrf(request: web.Request) -> str:
    s = _WHO.get().session
    return s.csrf if s is not None else ""


def _html(
    request: web.Request, page: str, title: str, body: str, status: int = 200
) -> web.Response:
    p = _page(request)
    text = views.layout(
        page,
        title,
        body,
        csrf=_csrf(request),
        authed=_WHO.get().session is not None,
        refresh=p.cfg.refresh_s,
    )
    return web.Response(text=text, content_type="text/html", status=status)


def _is_form(request: web.Request) -> bool:
    return request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")


# -- login ---------------------------------------------------------------------------------------
def _safe_next(value: str | None) -> str:
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _login_form(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    p = _page(request)
    token = secrets.token_urlsafe(24)
    hint = ""
    if p.cfg.password_hash is None:
        hint = (
            "No password is configured: the first one is in "
            f"{p.storage_root / 'status_page.password'} "
            "(set status_page.password_hash to replace it)."
        )
    body = views.login(token, error, _safe_next(request.query.get("next")), hint)
    resp = _html(request, "login", "Log in", body, status)
    resp.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=p.cfg.cookie_secure,
        max_age=3600,
    )
    return resp


async def login_get(request: web.Request) -> web.Response:
    return _login_form(request)


async def login_post(request: web.Request) -> web.StreamResponse:
    p = _page(request)
    client = request.remote or "?"
    wait = p.limiter.retry_after(client)
    if wait > 0:
        resp = _login_form(
            request, f"Too many wrong passwords: try again in {max(1, round(wait))} s.", 429
        )
        resp.headers["Retry-After"] = str(max(1, round(wait)))
        return resp
    form = await _form(request)
    sent = form.get("csrf_token")
    cookie = request.cookies.get(LOGIN_COOKIE)
    if not isinstance(sent, str) or not cookie or not tokens_equal(sent, cookie):
        # a stale form (another login tab, an expired cookie) or a cross-site post
        return _login_form(request, "The login form expired: please try again.", 403)
    # counted before the slow hash: concurrent guesses are limited like serial ones
    attempt = p.limiter.acquire(client)
    if attempt is None:
        wait = max(1, round(p.limiter.retry_after(client)))
        resp = _login_form(request, f"Too many wrong passwords: try again in {wait} s.", 429)
        resp.headers["Retry-After"] = str(wait)
        return resp
    password = form.get("password")
    if not isinstance(password, str) or not await p.check_password(password):
        p.logins_failed += 1
        p.log.warning("login_failed", client=client)
        return _login_form(request, "Wrong password.", status=401)
    p.limiter.succeeded(client, attempt)
    session = p.sessions.create()
    nxt = form.get("next")
    resp = web.HTTPSeeOther(_safe_next(nxt if isinstance(nxt, str) else None))
    resp.set_cookie(
        SESSION_COOKIE,
        session.sid,
        httponly=True,
        samesite="Strict",
        secure=p.cfg.cookie_secure,
        max_age=int(p.cfg.session_ttl_s),
        path="/",
    )
    resp.del_cookie(LOGIN_COOKIE)
    p.log.info("login", client=client)
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    s = _WHO.get().session
    _page(request).sessions.drop(s.sid if s else None)
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp


# -- pages ---------------------------------------------------------------------------------------
async def overview(request: web.Request) -> web.Response:
    p = _page(request)
    system = await p.system_info()
    recent = merge([], p.live.rows(), EventQuery(limit=10))
    if len(recent) < 10:
        recent = await _events(p, EventQuery(limit=10))
    last = p.live.last_by_camera()
    for row in recent:
        if row.camera_id not in last:
            last[row.camera_id] = row
    body = views.overview(
        p.camera_views(),
        last,
        recent,
        p.control_dict(),
        system,
        csrf=_csrf(request),
        can_write=_can_write(request),
        width=p.cfg.snapshot_width,
        tz=p.app_cfg.runtime.timezone,
    )
    return _html(request, "overview", "Overview", body)


def _query(request: web.Request) -> EventQuery:
    q = request.query
    day = q.get("day") or None
    if day is not None:
        try:
            year = time.strptime(day, "%Y-%m-%d").tm_year
        except ValueError as e:
            raise web.HTTPBadRequest(text="day must be YYYY-MM-DD") from e
        if not MIN_YEAR <= year <= MAX_YEAR:  # the clock cannot reach 9999-12-31's next day
            raise web.HTTPBadRequest(text=f"day must be within {MIN_YEAR}-{MAX_YEAR}")
    try:
        before = float(q["before"]) if q.get("before") else None
        after = float(q["after"]) if q.get("after") else None
        limit = min(200, max(1, int(q.get("limit", "50"))))
    except ValueError as e:
        raise web.HTTPBadRequest(text="before, after and limit must be numbers") from e
    if any(t is not None and not math.isfinite(t) for t in (before, after)):
        raise web.HTTPBadRequest(text="before and after must be finite numbers (Unix times)")
    severity = q.get("severity") or None
    if severity not in (None, "alert", "detection"):
        raise web.HTTPBadRequest(text="severity must be alert or detection")
    return EventQuery(
        camera=q.get("camera") or None,
        label=q.get("label") or None,
        severity=severity,
        zone=q.get("zone") or None,
        after=after,
        day=day,
        before=before,
        limit=limit,
        tz=_page(request).app_cfg.runtime.timezone,
    )


async def _events(p: StatusPage, q: EventQuery) -> list[Any]:
    indexed = await query_index(p.index, q)
    return merge(indexed, p.live.rows(), q)


async def events_page(request: web.Request) -> web.Response:
    p = _page(request)
    q = _query(request)
    rows = await _events(p, q)
    labels = await labels_in_index(p.index)
    labels = sorted(set(labels) | {lb for r in p.live.rows() for lb in r.labels})
    body = views.events(rows, q, p.camera_ids(), labels, p.app_cfg.runtime.timezone)
    return _html(request, "events", "Events", body)


async def _event(p: StatusPage, event_id: str) -> Any:
    live = p.live.get(event_id)
    indexed = await get_event(p.index, event_id)
    if indexed is None:
        return live
    if live is None:
        return indexed
    return merge([indexed], [live], EventQuery(limit=1))[0]


async def event_page(request: web.Request) -> web.Response:
    p = _page(request)
    row = await _event(p, request.match_info["event_id"])
    if row is None:
        raise web.HTTPNotFound(text="no such event")
    return _html(request, "events", f"Event {row.id}", views.event(row, p.app_cfg.runtime.timezone))


def _camera(request: web.Request) -> str:
    cam = request.match_info["camera"]
    if cam not in _page(request).camera_ids():
        raise web.HTTPNotFound(text="no such camera")
    return cam


async def live_page(request: web.Request) -> web.Response:
    p = _page(request)
    cam = _camera(request)
    name = p.app_cfg.cameras[cam].name or cam
    return _html(request, "live", name, views.live(cam, name, p.cfg.live_fps))


async def health_page(request: web.Request, notice: str = "", status: int = 200) -> web.Response:
    p = _page(request)
    ready, checks = await p.readiness()
    system = await p.system_info()
    update = await p.ctx.executor.run(pages.update_state, p.cfg.update_dir)
    cams = pages.camera_health(p.camera_views(), p.reports.health)
    tz = p.app_cfg.runtime.timezone
    body = pages.health(
        cams,
        p.reports.health,
        p.reports.bus,
        ready,
        checks,
        system,
        update,
        tz,
        csrf=_csrf(request),
        can_write=_can_write(request),
        notice=notice,
        notice_ok=status < 400,
    )
    return _html(request, "health", "Health", body, status)


async def update_form(request: web.Request) -> web.Response:
    """Ask the root updater for a check or an update (write access: login + CSRF, or the
    token); the request file is all this does, the updater's answer shows on the Health page."""
    body = await _body(request)
    action, version = body.get("action", "update"), body.get("version") or None
    if action not in ("update", "check") or (
        version is not None and (not isinstance(version, str) or not updates.valid_version(version))
    ):
        raise web.HTTPBadRequest(text="action must be update or check, version a version")
    p = _page(request)
    folder = p.cfg.update_dir
    if not await p.ctx.executor.run(folder.is_dir):
        reason = "the updater is not set up on this box (installed by hand)"
        if _is_form(request):
            return await health_page(request, f"Not requested: {reason}.", 409)
        return web.json_response({"ok": False, "error": reason}, status=409)
    try:
        await p.ctx.executor.run(updates.write_request, folder, action, version)
    except updates.RequestPending as e:
        if _is_form(request):
            return await health_page(request, f"Not requested: {e}.", 409)
        return web.json_response({"ok": False, "error": str(e)}, status=409)
    p.log.info("update_requested", action=action, version=version, by=_who(request))
    what = "check" if action == "check" else f"update to {version or 'the newest version'}"
    if _is_form(request):
        return await health_page(
            request, f"The {what} was requested; the updater's answer appears here."
        )
    return web.json_response({"ok": True, "requested": action, "version": version}, status=202)


async def config_page(
    request: web.Request,
    message: str = "",
    ok: bool = True,
    text: str = "",
    errors: str = "",
    status: int = 200,
) -> web.Response:
    p = _page(request)
    body = views.config(
        p.config_view(), _csrf(request), _can_write(request), message, ok, text, errors
    )
    return _html(request, "config", "Configuration", body, status)


async def config_form(request: web.Request) -> web.Response:
    import yaml

    form = await _form(request)
    raw = form.get("changes")
    text = raw if isinstance(raw, str) else ""
    try:
        changes = yaml.safe_load(text) if text else None
    except yaml.YAMLError as e:
        err = pages.config_errors([f"(top level): not valid YAML: {e}"], None)
        return await config_page(request, "Not valid YAML.", False, text, err, 422)
    if not isinstance(changes, dict):
        return await config_page(
            request, "Write a mapping, e.g. 'tracker: {end_after_s: 8}'.", False, text, "", 422
        )
    verdict = await _page(request).update_config(changes, "web")
    if verdict is None:
        return await config_page(
            request, "No answer from the configuration service.", False, text, "", 200
        )
    if isinstance(verdict, ConfigSnapshot):
        return await config_page(request, f"Applied (version {verdict.version}).", ok=True)
    # rejected: the user's text stays in the box and each error sits under it, naming its key
    errors = pages.config_errors(list(verdict.errors) or [verdict.reason], changes)
    return await config_page(request, f"Rejected: {verdict.reason}", False, text, errors, 422)


# -- media and live images ----------------------------------------------------------------------
async def media(request: web.Request) -> web.StreamResponse:
    p = _page(request)
    rel = request.match_info["path"]
    path = await p.ctx.executor.run(resolve_media, p.storage_root, rel)
    if path is None:
        raise web.HTTPNotFound(text="not found")
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


async def latest_jpeg(request: web.Request) -> web.Response:
    p = _page(request)
    cam = _camera(request)
    try:
        width = int(request.query.get("w", "0"))
    except ValueError:
        width = 0
    width = p.cfg.snapshot_width if 0 < width <= p.cfg.snapshot_width else 0
    data = await p.jpeg(cam, width)
    if data is None:
        return web.json_response(
            {"ok": False, "error": "no frame yet"}, status=503, headers={"Retry-After": "2"}
        )
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def mjpeg(request: web.Request) -> web.StreamResponse:
    p = _page(request)
    cam = _camera(request)
    if p.streams >= p.cfg.max_streams:
        return web.json_response({"ok": False, "error": "too many live views"}, status=503)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "multipart/x-mixed-replace; boundary=frame",
            "Cache-Control": "no-store",
        }
    )
    await resp.prepare(request)
    p.streams += 1
    last_seq = -1
    try:
        while p._runner is not None:
            frame = p.frames.get(cam)
            if frame is not None and frame.seq != last_seq:
                data = await p.jpeg(cam, 0)
                if data is not None:
                    last_seq = frame.seq
                    await resp.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(data)).encode()
                        + b"\r\n\r\n"
                        + data
                        + b"\r\n"
                    )
            await asyncio.sleep(1.0 / p.cfg.live_fps)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        p.streams -= 1
    return resp


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    path = Path(str(resources.files("spyoncino") / "data" / "web" / "static" / name))
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


# -- health and metrics -------------------------------------------------------------------------
async def health_live(request: web.Request) -> web.Response:
    p = _page(request)
    lag = time.monotonic() - p.heartbeat_mono
    ok = lag < 5.0
    return web.json_response(
        {"ok": ok, "loop_lag_s": round(max(0.0, lag - 1.0), 3), "running": p._runner is not None},
        status=200 if ok else 503,
    )


async def health_ready(request: web.Request) -> web.Response:
    p = _page(request)
    ready, checks = await p.readiness()
    status = 200 if ready else 503
    if not p.cfg.health_detail_open and _WHO.get().principal is None:
        # anonymous on the LAN: the verdict only (the checks name cameras and paths)
        return web.json_response({"ready": ready}, status=status)
    why = [f"{k}: {c.get('reason')}" for k, c in checks.items() if not c["ok"]]
    return web.json_response({"ready": ready, "checks": checks, "reasons": why}, status=status)


async def metrics(request: web.Request) -> web.Response:
    p = _page(request)
    await p.system_info()
    body = await p.ctx.executor.run(p.prom.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# -- JSON API -----------------------------------------------------------------------------------
async def api_status(request: web.Request) -> web.Response:
    p = _page(request)
    system = await p.system_info()
    h = p.reports.health
    last = p.live.last_by_camera()
    cams = []
    for c in p.camera_views():
        d = dict(c.__dict__)
        row = last.get(c.id)
        d["last_event"] = row.as_dict() if row else None
        cams.append(d)
    return web.json_response(
        {
            "control": p.control_dict(),
            "cameras": cams,
            "health": h.overall if h else None,
            "system": system.as_dict(),
            "public_url": p.cfg.public_url,
        }
    )


async def api_events(request: web.Request) -> web.Response:
    rows = await _events(_page(request), _query(request))
    return web.json_response({"events": [r.as_dict() for r in rows]})


async def api_event(request: web.Request) -> web.Response:
    row = await _event(_page(request), request.match_info["event_id"])
    if row is None:
        return web.json_response({"ok": False, "error": "no such event"}, status=404)
    return web.json_response(row.as_dict())


async def _body(request: web.Request) -> dict[str, Any]:
    if _is_form(request):
        form = await _form(request)
        return {k: v for k, v in form.items() if k != "csrf_token" and isinstance(v, str)}
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError, LookupError) as e:  # LookupError: charset=nope
        raise web.HTTPBadRequest(text="body must be JSON") from e
    except RecursionError as e:  # "[[[[..." nested deeper than the parser can go
        raise web.HTTPBadRequest(text="body is nested too deeply") from e
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


def _command_reply(request: web.Request, rid: str, state: Any) -> web.StreamResponse:
    if _is_form(request):
        raise web.HTTPSeeOther("/")
    p = _page(request)
    return web.json_response(
        {"ok": True, "request_id": rid, "state": p.control_dict() if state is not None else None},
        status=200 if state is not None else 202,
    )


def _camera_in(request: web.Request, body: dict[str, Any]) -> str | None:
    """The optional ``camera_id`` of a command body: None, or a configured camera."""
    cam = body.get("camera_id")
    if cam in (None, ""):
        return None
    if not isinstance(cam, str) or cam not in _page(request).camera_ids():
        raise web.HTTPNotFound(text="no such camera")
    return cam


def _control(name: Literal["arm", "disarm", "unmute"]) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        cam = _camera_in(request, body)
        rid, state = await _page(request).command(name, _who(request), camera_id=cam)
        return _command_reply(request, rid, state)

    handler.__name__ = f"api_{name}"
    return handler


async def api_mute(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    try:
        duration = float(body["duration_s"]) if body.get("duration_s") not in (None, "") else None
    except (TypeError, ValueError) as e:
        raise web.HTTPBadRequest(text="duration_s must be a number") from e
    if duration is not None and not 0 < duration <= 7 * 86400:
        raise web.HTTPBadRequest(text="duration_s must be in (0, 604800]")
    cam = _camera_in(request, body)
    rid, state = await _page(request).command(
        "mute", _who(request), camera_id=cam, duration_s=duration
    )
    return _command_reply(request, rid, state)


async def api_snapshot(request: web.Request) -> web.StreamResponse:
    cam = _camera(request)
    rid, art = await _page(request).snapshot(cam, _who(request))
    if _is_form(request):
        raise web.HTTPSeeOther("/")
    if art is None:
        return web.json_response(
            {"ok": True, "request_id": rid, "image": f"/cameras/{cam}/latest.jpg", "stored": None},
            status=202,
        )
    return web.json_response(
        {"ok": True, "request_id": rid, "image": "/media/" + art.relpath, "stored": art.relpath}
    )


async def api_config(request: web.Request) -> web.Response:
    changes = await _body(request)
    if not changes:
        raise web.HTTPBadRequest(text="send the changes as a JSON object")
    verdict = await _page(request).update_config(changes, _who(request))
    if verdict is None:
        return web.json_response(
            {"ok": False, "error": "no answer from the configuration service"}, status=504
        )
    if isinstance(verdict, ConfigSnapshot):
        return web.json_response(
            {
                "ok": True,
                "version": verdict.version,
                "changed_modules": list(verdict.changed_modules),
                "config": verdict.config,
                "request_id": verdict.request_id,
            }
        )
    return web.json_response(
        {
            "ok": False,
            "version": verdict.version,
            "reason": verdict.reason,
            "errors": list(verdict.errors),
            "request_id": verdict.request_id,
        },
        status=422,
    )


async def api_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``event``, ``state``, ``health``, ``stored``."""
    p = _page(request)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    q: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(maxsize=256)
    p.clients.add(q)
    try:
        state = p.control_dict()
        if state is not None:
            await resp.write(_sse("state", state))
        while True:
            try:
                item = await asyncio.wait_for(q.get(), timeout=15.0)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            await resp.write(_sse(*item))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        p.clients.discard(q)
    with contextlib.suppress(Exception):
        await resp.write_eof()
    return resp


def _sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def build_app(page: StatusPage) -> web.Application:
    app = web.Application(middlewares=[auth_middleware], client_max_size=256 * 1024)
    app[PAGE] = page
    app.on_response_prepare.append(_headers)
    r = app.router
    r.add_get("/health/live", health_live)
    r.add_get("/health/ready", health_ready)
    r.add_get("/metrics", metrics)
    r.add_get("/login", login_get)
    r.add_post("/login", login_post)
    r.add_post("/logout", logout)
    r.add_get("/static/{name}", static)
    r.add_get("/", overview)
    r.add_get("/events", events_page)
    r.add_get("/events/{event_id}", event_page)
    r.add_get("/cameras/{camera}", live_page)
    r.add_get("/cameras/{camera}/latest.jpg", latest_jpeg)
    r.add_get("/cameras/{camera}/stream.mjpeg", mjpeg)
    r.add_get("/health", health_page)
    r.add_post("/update", update_form)
    r.add_get("/config", config_page)
    r.add_post("/config", config_form)
    r.add_get("/media/{path:.*}", media)
    r.add_get("/api/status", api_status)
    r.add_get("/api/events", api_events)
    r.add_get("/api/events/{event_id}", api_event)
    r.add_get("/api/stream", api_stream)
    r.add_post("/api/arm", _control("arm"))
    r.add_post("/api/disarm", _control("disarm"))
    r.add_post("/api/unmute", _control("unmute"))
    r.add_post("/api/mute", api_mute)
    r.add_post("/api/cameras/{camera}/snapshot", api_snapshot)
    r.add_post("/api/config", api_config)
    home.add_routes(r)  # zones, first run
    return app
