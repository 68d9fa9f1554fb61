"""The pages a home user reads: Health in plain words, zones drawn on the snapshot, the
first-run page, and the config form's verdict next to the keys it names.

Server-rendered like ``_views``; the drawing and the first-run probe need JavaScript
(``zones.js``, ``setup.js``), everything else works without it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spyoncino.helpers import updates
from spyoncino.schemas.status import BusStatus, HealthReport, ModuleHealth

from ._metrics import camera_of
from ._system import SystemInfo
from ._views import esc, size, when

#: a camera's input state (``camera_state`` metric or module state) in the words the page uses
CAMERA_WORDS = {
    "streaming": "streaming",
    "connecting": "reconnecting",
    "reconnecting": "reconnecting",
    "stalled": "reconnecting",
    "starting": "reconnecting",
    "degraded": "reconnecting",
    "failed": "failed",
    "wedged": "failed",
    "quarantined": "failed",
    "stopped": "failed",
    "ended": "ended",
}


@dataclass(frozen=True)
class CameraHealth:
    id: str
    name: str
    word: str  # streaming, reconnecting, failed, ended, unknown
    why: str
    fps: float | None


def camera_health(cams: list[Any], report: HealthReport | None) -> list[CameraHealth]:
    """Each configured camera in one word and a reason, from its input module's health."""
    inputs: dict[str, ModuleHealth] = {}
    for mh in report.modules if report is not None else ():
        cid = camera_of(mh)
        if cid is not None:
            inputs[cid] = mh
    out = []
    for c in cams:
        m = inputs.get(c.id)
        word = CAMERA_WORDS.get(c.state, "unknown")
        if m is None:
            why = "no report from this camera yet"
        elif word == "streaming":
            age = (
                "" if c.last_frame_age_s is None else f", last frame {c.last_frame_age_s:.0f} s ago"
            )
            why = ("-" if c.fps is None else f"{c.fps:.1f}") + " frames a second" + age
            why += _drops_text(m)
        elif word == "ended":
            why = "the video file has played to its end"
        else:
            why = m.last_error or m.detail or c.state
        out.append(CameraHealth(c.id, c.name, word, why, c.fps))
    return out


def _drops_text(m: ModuleHealth) -> str:
    """The input's lost frames by reason, e.g. ``, 12 dropped (queue_full 10, decode_error 2)``
    (the fps cap is left out: it drops on purpose)."""
    counts = {}
    for key, v in m.metrics.items():
        wanted = key.startswith("dropped_") and key != "dropped_fps_cap"
        if wanted and isinstance(v, int) and not isinstance(v, bool) and v > 0:
            counts[key[8:]] = v
    if not counts:
        return ""
    detail = ", ".join(f"{k} {v}" for k, v in counts.items())
    return f", {sum(counts.values())} dropped ({detail})"


def alerts_pending(report: HealthReport | None) -> list[tuple[str, int]]:
    """(channel module, alerts waiting to be sent) for every module with an outbox."""
    out = []
    for m in report.modules if report is not None else ():
        for key in ("outbox_pending", "outbox_depth"):
            v = m.metrics.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((m.module, int(v)))
                break
    return out


def update_state(folder: Path) -> dict[str, Any] | None:
    """What the A/B updater left in the service's exchange folder (read only; blocking).

    ``result`` is the last update's outcome, ``check`` the last check, ``requested`` a request
    still waiting for the root unit (``spyoncino.helpers.updates``). None: no updater here.
    """
    files = updates.read_files(folder)
    if files is None:
        return None
    return {"result": files.result, "requested": files.requested, "check": files.check}


def _update_words(state: dict[str, Any] | None, tz: str | None) -> str:
    if state is None:
        return "The updater is not set up on this box (installed by hand)."
    parts = []
    res = state.get("result")
    if isinstance(res, dict):
        at = res.get("at")
        stamp = when(float(at), tz) if isinstance(at, (int, float)) else "-"
        parts.append(
            f"Last {res.get('action', 'update')} at {stamp}: {res.get('outcome', '?')}. "
            f"{res.get('message', '')}"
        )
        if res.get("running"):
            parts.append(f"Running version {res['running']}.")
    else:
        parts.append("No update has run yet.")
    chk = state.get("check")
    if isinstance(chk, dict):
        at = chk.get("at")
        stamp = when(float(at), tz) if isinstance(at, (int, float)) else "-"
        parts.append(f"Last check at {stamp}: {chk.get('message', '')}.")
    req = state.get("requested")
    if isinstance(req, dict):
        parts.append(f"An {req.get('action', 'update')} was asked for and waits for the updater.")
    return " ".join(parts)


def _update_forms(state: dict[str, Any] | None, csrf: str) -> str:
    """Check now, and Update to X once a check found X (POST /update, CSRF-protected)."""
    if state is None:
        return ""
    check = state.get("check")
    newer = updates.UpdateFiles(None, check if isinstance(check, dict) else None, None).newer()
    field = f'<input type="hidden" name="csrf_token" value="{esc(csrf)}">'
    out = [
        f'<form method="post" action="/update" class="inline" id="update-check">{field}'
        '<input type="hidden" name="action" value="check">'
        '<button type="submit">Check for updates</button></form>'
    ]
    if newer is not None:
        out.append(
            f'<form method="post" action="/update" class="inline" id="update-install">{field}'
            '<input type="hidden" name="action" value="update">'
            f'<input type="hidden" name="version" value="{esc(newer)}">'
            f'<button type="submit">Update to {esc(newer)}</button></form>'
        )
    return "<p>" + "".join(out) + "</p>"


def _row(label: str, word: str, text: str, ident: str = "") -> str:
    rid = f' id="{esc(ident)}"' if ident else ""
    return (
        f'<li{rid}><span class="what">{esc(label)}</span> '
        f'<span class="state {esc(word)}">{esc(word)}</span> '
        f'<span class="why">{esc(text)}</span></li>'
    )


def health(
    cams: list[CameraHealth],
    report: HealthReport | None,
    bus: BusStatus | None,
    ready: bool,
    checks: dict[str, Any],
    system: SystemInfo | None,
    update: dict[str, Any] | None,
    tz: str | None,
    *,
    csrf: str = "",
    can_write: bool = False,
    notice: str = "",
    notice_ok: bool = True,
) -> str:
    problems = [c for c in cams if c.word in ("failed", "reconnecting")]
    storage = checks.get("storage", {"ok": True})
    out = [
        f'<h1>Health <span class="badge {"armed" if ready else "disarmed"}">'
        f"{'all good' if ready else 'needs a look'}</span></h1>"
    ]
    if not ready:
        reasons = [f"{k}: {c.get('reason', '')}" for k, c in checks.items() if not c["ok"]]
        out.append(f'<p class="error">{esc("; ".join(reasons))}</p>')
    out.append('<section><h2>Cameras</h2><ul class="plain" id="health-cameras">')
    for c in cams:
        out.append(_row(c.name, c.word, c.why, f"cam-{c.id}"))
    if not cams:
        out.append('<li>No camera is configured: <a href="/setup">add one</a>.</li>')
    out.append("</ul>")
    if problems:
        out.append(f'<p class="error">{len(problems)} camera(s) not streaming.</p>')
    out.append('</section><section><h2>Storage</h2><ul class="plain" id="health-storage">')
    free = (
        f"{size(system.disk_free)} free of {size(system.disk_total)}"
        if system is not None
        else "free space not measured yet"
    )
    if storage["ok"]:
        out.append(_row("Card", "ok", f"{free}; writable"))
    else:
        out.append(_row("Card", "failed", f"{free}; not writable: {storage.get('reason', '')}"))
    out.append('</ul></section><section><h2>Alerts</h2><ul class="plain" id="health-alerts">')
    pending = alerts_pending(report)
    for module, n in pending:
        word = "ok" if n == 0 else "degraded"
        out.append(_row(module, word, "nothing waiting" if n == 0 else f"{n} waiting to be sent"))
    if not pending:
        out.append("<li>No alert channel is configured.</li>")
    out.append('</ul></section><section><h2>Updates</h2><p id="health-update">')
    out.append(esc(_update_words(update, tz)) + "</p>")
    if notice:
        cls = "ok" if notice_ok else "error"
        out.append(f'<p class="{cls}" id="update-notice">{esc(notice)}</p>')
    if can_write:
        out.append(_update_forms(update, csrf))
    out.append("</section>")
    out.append('<details id="health-details"><summary>Details (modules and bus)</summary>')
    out.append(_details(report, bus, checks))
    out.append("</details>")
    return "".join(out)


def _details(report: HealthReport | None, bus: BusStatus | None, checks: dict[str, Any]) -> str:
    out = ['<div class="scroll"><table><tr><th>Check</th><th>OK</th><th>Why</th></tr>']
    for name, c in checks.items():
        out.append(
            f"<tr><td>{esc(name)}</td><td>{'yes' if c['ok'] else 'no'}</td>"
            f"<td>{esc(c.get('reason', ''))}</td></tr>"
        )
    out.append("</table></div><h2>Modules</h2>")
    if report is None:
        out.append("<p>No health report yet.</p>")
    else:
        out.append(
            '<div class="scroll"><table><tr><th>Module</th><th>State</th><th>Detail</th>'
            "<th>Last error</th><th>Restarts</th></tr>"
        )
        for m in report.modules:
            out.append(
                f'<tr><td>{esc(m.module)}</td><td class="state {esc(m.state)}">{esc(m.state)}</td>'
                f"<td>{esc(m.detail)}</td><td>{esc(m.last_error or '')}</td>"
                f"<td>{m.restarts}</td></tr>"
            )
        out.append("</table></div>")
    out.append("<h2>Bus</h2>")
    if bus is None:
        out.append("<p>No bus report yet.</p>")
    else:
        for w in bus.warnings:
            out.append(f'<p class="error">{esc(w)}</p>')
        out.append(
            '<div class="scroll"><table><tr><th>Subscriber</th><th>Pattern</th><th>Policy</th>'
            "<th>Depth</th><th>Delivered</th><th>Dropped</th><th>Errors</th><th>Lag ms</th></tr>"
        )
        for s in bus.subscriptions:
            out.append(
                f"<tr><td>{esc(s.module)}</td><td>{esc(s.pattern)}</td><td>{esc(s.policy)}</td>"
                f"<td>{s.depth}/{s.maxsize}</td><td>{s.delivered}</td><td>{s.dropped}</td>"
                f"<td>{s.errors}</td><td>{s.lag_ms:.1f}</td></tr>"
            )
        out.append("</table></div>")
    return "".join(out)


# -- config verdicts -----------------------------------------------------------------------------
#: ``<layer>: <dotted.key>: <message>`` (what ``core.config.format_errors`` writes)
_LAYERED = re.compile(r"^[^:]*?: (?P<key>[a-z0-9_][\w.\-]*|\(top level\)): ")
_DOTTED = re.compile(r"\b(?P<key>[a-z_][a-z0-9_]*(?:\.[\w\-]+)+)(?=[:\s]|$)")


def _leaves(changes: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in changes.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.extend(_leaves(v, key + "."))
        else:
            out.append(key)
    return out


def error_key(error: str, changes: Mapping[str, Any] | None = None) -> str:
    """The config key an error is about, so the page can show it next to that key.

    Validation errors name it after their layer (``update: tracker.end_after_s: ...``); a
    module's refusal names it in its text (``status_page refused the change:
    status_page.listen: ...``); else the key of the change it could only be about (one
    changed key), or the top-level keys changed.
    """
    m = _LAYERED.match(error)
    if m and m.group("key") != "(top level)":
        return m.group("key")
    leaves = _leaves(changes or {})
    for m2 in _DOTTED.finditer(error):
        key = m2.group("key")
        if not leaves or any(leaf == key or leaf.startswith(key + ".") for leaf in leaves):
            return key
    if len(leaves) == 1:
        return leaves[0]
    return ", ".join(sorted({leaf.split(".", 1)[0] for leaf in leaves})) or "(top level)"


def config_errors(errors: list[str], changes: Mapping[str, Any] | None) -> str:
    if not errors:
        return ""
    items = "".join(
        f'<li data-key="{esc(k)}"><code class="key">{esc(k)}</code> {esc(e)}</li>'
        for e in errors
        for k in (error_key(e, changes),)
    )
    return f'<ul id="config-errors" class="errors">{items}</ul>'


# -- zones ---------------------------------------------------------------------------------------
def zones(
    cam_id: str,
    name: str,
    current: list[dict[str, Any]],
    can_write: bool,
    masks: list[dict[str, Any]] | None = None,
) -> str:
    """The snapshot with the camera's zones and privacy masks over it; ``zones.js`` draws."""
    masks = masks or []
    data = esc(json.dumps(current, separators=(",", ":")))
    mdata = esc(json.dumps(masks, separators=(",", ":")))
    tools = ""
    if can_write:
        tools = (
            '<div class="zone-tools" id="zone-tools">'
            '<p class="hint">Tap or click the corners of a zone on the picture, then Save.</p>'
            '<label>Name <input id="zone-name" maxlength="40" value="zone"></label>'
            '<label>Kind <select id="zone-mode"><option value="include">alert only inside'
            '</option><option value="exclude">never alert inside</option>'
            '<option value="mask">privacy mask (blacked out everywhere)</option>'
            "</select></label>"
            '<button type="button" id="zone-undo">Undo corner</button>'
            '<button type="button" id="zone-clear">Start over</button>'
            '<button type="button" id="zone-save">Save zone</button>'
            '<p id="zone-result" role="status"></p></div>'
        )

    def item(z: dict[str, Any], kind: str) -> str:
        zname = esc(z.get("name", ""))
        delete = (
            f' <button type="button" class="zone-del" data-zone="{zname}" data-kind="{kind}">'
            "Delete</button>"
            if can_write
            else ""
        )
        what = "privacy mask" if kind == "mask" else esc(z.get("mode", "include"))
        return (
            f'<li data-zone="{zname}" data-kind="{kind}"><b>{zname}</b> '
            f"{what}, {len(z.get('polygon', ()))} corners{delete}</li>"
        )

    items = "".join(item(z, "zone") for z in current) + "".join(item(m, "mask") for m in masks)
    return (
        f"<h1>Zones of {esc(name)}</h1>"
        f'<div class="zone-stage" id="zone-stage" data-camera="{esc(cam_id)}" '
        f'data-zones="{data}" data-masks="{mdata}">'
        f'<img id="zone-snap" alt="snapshot of {esc(name)}" '
        f'src="/cameras/{esc(cam_id)}/latest.jpg">'
        '<svg id="zone-svg" viewBox="0 0 1 1" preserveAspectRatio="none"></svg></div>'
        f"{tools}"
        f'<h2>Saved zones</h2><ul id="zone-list" class="plain">{items}</ul>'
        + ("" if current or masks else '<p id="no-zones">No zones: the whole picture counts.</p>')
        + '<script src="/static/zones.js" defer></script>'
    )


# -- first run -----------------------------------------------------------------------------------
def setup(
    found: list[Any],
    can_write: bool,
    configured: int = 0,
    *,
    csrf: str = "",
    message: str = '<p id="setup-result" role="status"></p>',
) -> str:
    """The first-run page: what this box can see, or a source typed in; probed, then saved.

    The form posts without JavaScript too (its CSRF token is a hidden field); ``message`` is
    the result paragraph, filled after such a post's redirect."""
    items = "".join(
        f'<li><button type="button" class="pick" data-source="{esc(c.source)}" '
        f'data-name="{esc(c.name)}">{esc(c.label)}</button> <code>{esc(c.source)}</code></li>'
        for c in found
    )
    listed = (
        f'<ul class="plain" id="setup-found">{items}</ul>'
        if found
        else '<p id="setup-none">No camera found on this box (no Pi camera, no USB camera).</p>'
    )
    if not can_write:
        return f"<h1>Add a camera</h1>{listed}<p>Log in to add one.</p>"
    return (
        "<h1>Add a camera</h1>"
        + (
            "<p>No camera is configured yet. "
            if not configured
            else f"<p>{configured} camera(s) configured; this adds another. "
        )
        + "Pick one this box found, or type an RTSP URL or the "
        "path of a video file, test it, then save.</p>"
        f"<h2>Found on this box</h2>{listed}"
        '<form id="setup-form" class="setup" method="post" action="/api/setup/camera">'
        f'<input type="hidden" name="csrf_token" value="{esc(csrf)}">'
        '<label>Source <input id="setup-source" name="source" required '
        'placeholder="rtsp://user:pass@192.168.1.20/stream or /path/to/video.mp4"></label>'
        '<label>Camera id <input id="setup-id" name="camera_id" value="cam1" required '
        'pattern="[a-z0-9][a-z0-9_\\-]{0,31}"></label>'
        '<label>Name <input id="setup-name" name="name" placeholder="Front door"></label>'
        '<button type="button" id="setup-test">Test</button> '
        '<button type="submit" id="setup-save">Save and start</button></form>'
        f"{message}"
        '<img id="setup-frame" alt="test frame" hidden>'
        '<p>Alerts on your phone: <a href="/settings/telegram">set up Telegram</a>.</p>'
        '<script src="/static/setup.js" defer></script>'
    )


# -- timeline ------------------------------------------------------------------------------------
def timeline(
    cam_id: str,
    name: str,
    day: str,
    start: float,
    rows: list[Any],
    prev_day: str,
    next_day: str | None,
    tz: str | None,
    hour: int | None = None,
) -> str:
    """A camera's day (or one hour of it) as a strip, an SVG whose unit is a minute of the
    day or a second of the hour; each event a mark.

    A mark links to the event page (plays there without JavaScript); ``timeline.js`` plays
    its clip (or shows its snapshot) under the strip instead. The day view links to each hour
    that had events, where marks a few seconds apart stand apart.
    """
    span, unit = (3600.0, 1.0) if hour is not None else (86400.0, 60.0)
    units = span / unit  # 3600 or 1440
    step = 300 if hour is not None else 60  # a tick every 5 minutes, or every hour
    major = 3 if hour is not None else 6  # a long tick every 15 minutes, or 6 hours
    ticks = "".join(
        f'<line x1="{i * step}" y1="0" x2="{i * step}" y2="{"40" if i % major == 0 else "8"}" '
        'class="tick"></line>'
        for i in range(int(units // step) + 1)
    )
    marks = []
    items = []
    busy: set[int] = set()
    for r in sorted(rows, key=lambda r: r.started_at):
        if not start <= r.started_at < start + span:
            continue
        busy.add(int((r.started_at - start) // 3600))
        x = max(0.0, min(units, (r.started_at - start) / unit))
        end = r.ended_at or r.updated_at or r.started_at
        # at least 1/144 of the strip: findable with a finger on a phone
        width = max(units / 144, min(units - x, (end - r.started_at) / unit))
        clip = (r.artifacts.get("clip") or {}).get("url", "")
        snap = (r.artifacts.get("snapshot") or r.artifacts.get("thumbnail") or {}).get("url", "")
        label = ", ".join(r.labels) or r.kind
        title = f"{label} {when(r.started_at, tz)[11:]}"
        marks.append(
            f'<a href="/events/{esc(r.id)}" class="mark" data-event="{esc(r.id)}" '
            f'data-clip="{esc(clip)}" data-snap="{esc(snap)}"><title>{esc(title)}</title>'
            f'<rect x="{x:.1f}" y="10" width="{width:.1f}" height="20"></rect></a>'
        )
        items.append(
            f'<li><a href="/events/{esc(r.id)}" data-event="{esc(r.id)}">'
            f"<time>{esc(when(r.started_at, tz)[11:])}</time> <b>{esc(label)}</b>"
            + (" · clip" if clip else "")
            + "</a></li>"
        )
    link = f"/cameras/{esc(cam_id)}/timeline?day="
    if hour is None:
        title = esc(day)
        nav = f'<a href="{link}{esc(prev_day)}">&larr; {esc(prev_day)}</a>'
        if next_day:
            nav += f' · <a href="{link}{esc(next_day)}">{esc(next_day)} &rarr;</a>'
        if busy:
            nav += '</p><p class="zoom">Hours: ' + " ".join(
                f'<a href="{link}{esc(day)}&amp;hour={h}">{h:02d}</a>' for h in sorted(busy)
            )
        hours = ("00", "06", "12", "18", "24")
    else:
        title = f"{esc(day)} {hour:02d}:00"
        nav = f'<a href="{link}{esc(day)}">&uarr; the whole day</a>'
        if hour > 0:
            nav += f' · <a href="{link}{esc(day)}&amp;hour={hour - 1}">{hour - 1:02d}:00</a>'
        if hour < 23:
            nav += f' · <a href="{link}{esc(day)}&amp;hour={hour + 1}">{hour + 1:02d}:00</a>'
        hours = (":00", ":15", ":30", ":45", ":60")
    return (
        f"<h1>{esc(name)}: {title}</h1><p>{nav}</p>"
        f'<svg id="timeline" class="timeline" viewBox="0 0 {units:g} 40" '
        f'preserveAspectRatio="none" data-camera="{esc(cam_id)}">{ticks}{"".join(marks)}</svg>'
        '<div class="hours">' + "".join(f"<span>{h}</span>" for h in hours) + "</div>"
        f'<p class="hint">{len(items)} event(s). Tap a mark to play it.</p>'
        '<video id="timeline-clip" controls playsinline preload="none" hidden></video>'
        '<img id="timeline-snap" alt="event snapshot" hidden>'
        f'<ul class="plain" id="timeline-list">{"".join(items)}</ul>'
        '<script src="/static/timeline.js" defer></script>'
    )


__all__ = [
    "CameraHealth",
    "alerts_pending",
    "camera_health",
    "config_errors",
    "error_key",
    "health",
    "setup",
    "timeline",
    "update_state",
    "zones",
]
