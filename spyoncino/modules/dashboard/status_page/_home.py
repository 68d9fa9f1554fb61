"""Routes of the pages a home user drives: zones drawn on the snapshot and the first-run page.

Both write through ``config.update`` like the Config form (so accepted changes land in the
saved overlay and survive a restart); nothing here writes a config file itself.
"""

from __future__ import annotations

import json
import tempfile
import time
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiohttp import web

from spyoncino.core.config import CAMERA_ID, redact_url
from spyoncino.schemas.control import ConfigSnapshot

from . import _pages as pages
from . import _settings
from ._store import EventQuery

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import UrlDispatcher

#: the section of ``cameras.<id>`` that holds zones (the tracker's per-camera options)
ZONES_SECTION = "tracker"
#: at most this many zones per camera and corners per zone from the drawing page
MAX_ZONES, MAX_CORNERS = 16, 64


def _web() -> Any:
    from . import _web  # the app's helpers (no import cycle at module load)

    return _web


def camera_zones(config: dict[str, Any], cam: str) -> list[dict[str, Any]]:
    """The zones configured for ``cam`` in a ``dump_config`` dict."""
    cams = config.get("cameras") or {}
    section = (cams.get(cam) or {}).get(ZONES_SECTION) or {}
    zones = section.get("zones") or []
    return [z for z in zones if isinstance(z, dict)]


def camera_masks(config: dict[str, Any], cam: str) -> list[dict[str, Any]]:
    """The privacy masks of ``cam`` (``cameras.<id>.privacy_masks``, applied at the input)."""
    masks = ((config.get("cameras") or {}).get(cam) or {}).get("privacy_masks") or []
    return [m for m in masks if isinstance(m, dict)]


async def zones_page(request: web.Request) -> web.Response:
    w = _web()
    p = w._page(request)
    cam = w._camera(request)
    name = p.app_cfg.cameras[cam].name or cam
    view = p.config_view()
    body = pages.zones(
        cam, name, camera_zones(view, cam), w._can_write(request), camera_masks(view, cam)
    )
    return w._html(request, "zones", f"Zones of {name}", body)  # type: ignore[no-any-return]


async def api_zones(request: web.Request) -> web.Response:
    """``{"zones": [{name, polygon, mode, labels}, ...], "masks": [{name, polygon}, ...]}``:
    each list given replaces the camera's whole list (zones for the tracker, privacy masks for
    the input)."""
    w = _web()
    cam = w._camera(request)
    body = await w._body(request)
    if "zones" not in body and "masks" not in body:
        raise web.HTTPBadRequest(text="send zones, masks or both")
    camera: dict[str, Any] = {}
    for key in ("zones", "masks"):
        if key not in body:
            continue
        items = body[key]
        if not isinstance(items, list) or len(items) > MAX_ZONES:
            raise web.HTTPBadRequest(text=f"{key} must be a list of at most {MAX_ZONES}")
        for z in items:
            poly = z.get("polygon") if isinstance(z, dict) else None
            if not isinstance(poly, list) or len(poly) > MAX_CORNERS:
                raise web.HTTPBadRequest(text=f"each needs a polygon of at most {MAX_CORNERS}")
        if key == "zones":
            camera[ZONES_SECTION] = {"zones": items}
        else:
            camera["privacy_masks"] = items
    return await _verdict(request, {"cameras": {cam: camera}})


async def _verdict(request: web.Request, changes: dict[str, Any]) -> web.Response:
    w = _web()
    verdict = await w._page(request).update_config(changes, w._who(request))
    if verdict is None:
        return web.json_response(
            {"ok": False, "error": "no answer from the configuration service"}, status=504
        )
    if isinstance(verdict, ConfigSnapshot):
        return web.json_response(
            {"ok": True, "version": verdict.version, "changed_modules": verdict.changed_modules}
        )
    errors = [{"key": pages.error_key(e, changes), "error": e} for e in verdict.errors]
    return web.json_response({"ok": False, "reason": verdict.reason, "errors": errors}, status=422)


# -- first run ------------------------------------------------------------------------------------
async def setup_page(request: web.Request) -> web.Response:
    w = _web()
    p = w._page(request)
    found = await p.ctx.executor.run(_found)
    body = pages.setup(
        found,
        w._can_write(request),
        len(p.camera_ids()),
        csrf=w._csrf(request),
        message=_settings.message_html(_settings.take_flash(request), "setup-result"),
    )
    return w._html(request, "setup", "Add a camera", body)  # type: ignore[no-any-return]


def _found() -> list[Any]:
    from spyoncino.helpers.sources import found_cameras  # what `doctor` / `setup` list

    return found_cameras()


def _probe(source: str) -> tuple[str, bytes | None]:
    from spyoncino.helpers.sources import grab_frame

    with tempfile.TemporaryDirectory(prefix="spyoncino-probe-") as tmp:
        out = Path(tmp) / "frame.jpg"
        try:
            message = grab_frame(source, out, timeout_s=8.0)
        except Exception as e:  # whatever a decoder or driver raises is the source's fault
            return f"cannot open {redact_url(source)}: {e}", None
        data = out.read_bytes() if out.is_file() else None
    if data is not None:
        message = message.split(";", 1)[0]  # the wizard's "look at it: <temp path>" is gone
    return message, data


def _source(body: dict[str, Any]) -> str:
    source = body.get("source")
    if not isinstance(source, str) or not source.strip() or len(source) > 500:
        raise web.HTTPBadRequest(text="source: a device, an RTSP URL or a file path")
    return source.strip()


async def api_probe(request: web.Request) -> web.Response:
    """Open the source, grab one frame; the frame is shown from ``/setup/frame.jpg``."""
    w = _web()
    p = w._page(request)
    source = _source(await w._body(request))
    message, data = await p.ctx.executor.run(_probe, source)
    if data is None:
        return web.json_response({"ok": False, "message": message}, status=422)
    p.setup_frame = data
    return web.json_response(
        {"ok": True, "message": message, "image": f"/setup/frame.jpg?t={time.time():.3f}"}
    )


async def setup_frame(request: web.Request) -> web.Response:
    data = _web()._page(request).setup_frame
    if not data:
        raise web.HTTPNotFound(text="no test frame yet")
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def api_add_camera(request: web.Request) -> web.StreamResponse:
    """Write the camera through ``config.update``; the orchestrator starts its pipeline.

    A ``fetch()`` client (``setup.js``) gets JSON; a plain form POST (no JavaScript) gets a
    303 back to ``/setup``, which then says what happened."""
    w = _web()
    body = await w._body(request)
    human = w._is_form(request) and not _settings.wants_json(request)
    try:
        source = _source(body)
        cid = body.get("camera_id") or "cam1"
        if not isinstance(cid, str) or not CAMERA_ID.match(cid):
            raise web.HTTPBadRequest(text="camera_id: lowercase letters, digits, '_' or '-'")
    except web.HTTPBadRequest as e:
        if not human:
            raise
        _settings.flash(request, False, f"Not saved: {e.text}")
        raise web.HTTPSeeOther("/setup") from None
    cam: dict[str, Any] = {"source": source}
    name = body.get("name")
    if isinstance(name, str) and name.strip():
        cam["name"] = name.strip()[:60]
    answer = await _verdict(request, {"cameras": {cid: cam}})
    if not human:
        return answer
    verdict = json.loads(answer.text or "{}")
    if verdict.get("ok"):
        _settings.flash(request, True, f"Saved: camera {cid} is starting.")
    else:
        errors = "; ".join(f"{e['key']}: {e['error']}" for e in verdict.get("errors") or [])
        why = errors or verdict.get("reason") or verdict.get("error") or "refused"
        _settings.flash(request, False, f"Not saved: {why}")
    raise web.HTTPSeeOther("/setup")


# -- timeline -------------------------------------------------------------------------------------
async def timeline_page(request: web.Request) -> web.Response:
    w = _web()
    p = w._page(request)
    cam = w._camera(request)
    tz = p.app_cfg.runtime.timezone
    zone = ZoneInfo(tz) if tz else None
    today = datetime.now(zone).date()
    raw = request.query.get("day") or today.isoformat()
    try:
        day = date.fromisoformat(raw)
    except ValueError as e:
        raise web.HTTPBadRequest(text="day must be YYYY-MM-DD") from e
    if not w.MIN_YEAR <= day.year <= w.MAX_YEAR - 1:
        raise web.HTTPBadRequest(text=f"day must be within {w.MIN_YEAR}-{w.MAX_YEAR - 1}")
    hour: int | None = None
    if request.query.get("hour"):
        try:
            hour = int(request.query["hour"])
        except ValueError as e:
            raise web.HTTPBadRequest(text="hour must be 0..23") from e
        if not 0 <= hour <= 23:
            raise web.HTTPBadRequest(text="hour must be 0..23")
    q = EventQuery(camera=cam, day=day.isoformat(), limit=200, tz=tz)
    rows = await w._events(p, q)
    bounds = q.day_bounds()
    assert bounds is not None
    start = bounds[0]
    if hour is not None:
        start = datetime.combine(day, dtime(hour), tzinfo=zone).timestamp()
    nxt = day + timedelta(days=1)
    body = pages.timeline(
        cam,
        p.app_cfg.cameras[cam].name or cam,
        day.isoformat(),
        start,
        rows,
        (day - timedelta(days=1)).isoformat(),
        nxt.isoformat() if nxt <= today else None,
        tz,
        hour,
    )
    return w._html(request, "timeline", f"Timeline of {cam}", body)  # type: ignore[no-any-return]


def add_routes(r: UrlDispatcher) -> None:
    r.add_get("/cameras/{camera}/timeline", timeline_page)
    r.add_get("/cameras/{camera}/zones", zones_page)
    r.add_post("/api/cameras/{camera}/zones", api_zones)
    r.add_get("/setup", setup_page)
    r.add_get("/setup/frame.jpg", setup_frame)
    r.add_post("/api/setup/probe", api_probe)
    r.add_post("/api/setup/camera", api_add_camera)
    _settings.add_routes(r)  # the Telegram form


__all__ = ["add_routes", "camera_zones"]
