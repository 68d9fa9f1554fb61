"""Server-rendered HTML: a page works without JavaScript; ``app.js`` only adds live updates.

Every value that reaches the page goes through ``esc``; secrets never do (the config view is
``dump_config``, already redacted).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from html import escape
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from spyoncino import __version__

from ._store import EventQuery, EventRow
from ._system import SystemInfo

NAV = (("/", "Overview"), ("/events", "Events"), ("/health", "Health"), ("/config", "Config"))


def esc(value: object) -> str:
    return escape(str(value), quote=True)


@cache
def template(name: str) -> Template:
    text = (resources.files("spyoncino") / "data" / "web" / name).read_text(encoding="utf-8")
    return Template(text)


def when(ts: float | None, tz: str | None = None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, ZoneInfo(tz) if tz else None).strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _on(href: str, page: str) -> bool:
    return href == "/" + page or (page == "overview" and href == "/")


def layout(page: str, title: str, body: str, *, csrf: str, authed: bool, refresh: float) -> str:
    links = "".join(
        f'<a href="{href}"{" class=on" if _on(href, page) else ""}>{esc(label)}</a>'
        for href, label in NAV
    )
    if authed:
        links += (
            '<form method="post" action="/logout" class="inline">'
            f'<input type="hidden" name="csrf_token" value="{esc(csrf)}">'
            '<button type="submit" class="link">Log out</button></form>'
        )
    else:
        links += '<a href="/login">Log in</a>'
    return template("layout.html").substitute(
        title=esc(title),
        page=esc(page),
        csrf=esc(csrf),
        refresh=esc(refresh),
        version=esc(__version__),
        nav=links,
        body=body,
    )


def login(token: str, error: str, next_url: str, hint: str) -> str:
    return template("login.html").substitute(
        token=esc(token), error=esc(error), next=esc(next_url), hint=esc(hint)
    )


def _csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf_token" value="{esc(csrf)}">'


def _armed_block(control: dict[str, Any] | None, csrf: str, can_write: bool) -> str:
    if control is None:
        state, cls = "unknown", "unknown"
    else:
        state, cls = ("armed", "armed") if control["armed"] else ("disarmed", "disarmed")
    muted = ", ".join(sorted(control["muted_until"])) if control and control["muted_until"] else ""
    buttons = ""
    if can_write:
        buttons = "".join(
            f'<form method="post" action="/api/{cmd}" class="inline js-command">{_csrf_field(csrf)}'
            f'<button type="submit" id="btn-{cmd}">{label}</button></form>'
            for cmd, label in (
                ("arm", "Arm"),
                ("disarm", "Disarm"),
                ("mute", "Mute 1 h"),
                ("unmute", "Unmute"),
            )
        )
    return (
        f'<section class="armed"><span id="armed-state" class="badge {cls}">{state}</span>'
        f'<span id="muted" class="muted">{"muted: " + esc(muted) if muted else ""}</span>'
        f"{buttons}</section>"
    )


def _event_line(row: EventRow | None, tz: str | None) -> str:
    if row is None:
        return "no event yet"
    labels = ", ".join(row.labels) or row.kind
    return f'<a href="/events/{esc(row.id)}">{esc(labels)} · {esc(when(row.started_at, tz))}</a>'


def overview(
    cams: list[Any],
    last: dict[str, EventRow],
    recent: list[EventRow],
    control: dict[str, Any] | None,
    system: SystemInfo | None,
    *,
    csrf: str,
    can_write: bool,
    width: int,
    tz: str | None,
) -> str:
    cards = []
    for c in cams:
        fps = "-" if c.fps is None else f"{c.fps:.1f}"
        cards.append(
            f'<article class="camera" data-camera="{esc(c.id)}">'
            f'<a href="/cameras/{esc(c.id)}"><img class="snap" alt="{esc(c.name)}" width="{width}" '
            f'src="/cameras/{esc(c.id)}/latest.jpg?w={width}"></a>'
            f"<h2>{esc(c.name)}</h2>"
            f'<p><span class="state {esc(c.state)}">{esc(c.state)}</span> · '
            f'<span class="fps">{fps}</span> fps</p>'
            f'<p class="last-event">{_event_line(last.get(c.id), tz)}</p>'
            f'<p><a href="/cameras/{esc(c.id)}/timeline">Timeline</a> · '
            f'<a href="/cameras/{esc(c.id)}/zones">Zones</a></p>'
            + (
                f'<form method="post" action="/api/cameras/{esc(c.id)}/snapshot" '
                'class="inline js-command">'
                f'{_csrf_field(csrf)}<button type="submit">Snapshot now</button></form>'
                if can_write
                else ""
            )
            + "</article>"
        )
    body = [_armed_block(control, csrf, can_write)]
    body.append(
        '<section class="cameras">'
        + (
            "".join(cards)
            or '<p id="first-run">No camera is configured yet: <a href="/setup">add one</a>.</p>'
        )
        + "</section>"
    )
    body.append('<section><h2>Recent events</h2><ul id="recent" class="events-list">')
    body.extend(_event_li(r, tz) for r in recent)
    body.append("</ul></section>")
    body.append(system_block(system))
    return "".join(body)


def _thumb(row: EventRow) -> str:
    art = row.artifacts.get("thumbnail") or row.artifacts.get("snapshot")
    if art is None:
        return '<span class="nothumb"></span>'
    return f'<img class="thumb" loading="lazy" alt="" src="{esc(art["url"])}">'


def _event_li(row: EventRow, tz: str | None) -> str:
    sev = esc(row.severity)
    return (
        f'<li data-event="{esc(row.id)}" data-severity="{sev}">'
        f'<a href="/events/{esc(row.id)}">{_thumb(row)}'
        f'<span class="cam">{esc(row.camera_id)}</span> <b>{esc(row.summary())}</b> '
        f"<time>{esc(when(row.started_at, tz))}</time> "
        f'<span class="severity severity-{sev}">{sev}</span> '
        f'<span class="phase">{esc(row.phase)}</span></a></li>'
    )


def system_block(s: SystemInfo | None) -> str:
    if s is None:
        return ""
    temp = "-" if s.cpu_temp_c is None else f"{s.cpu_temp_c:.1f} °C"
    throttled = "n/a" if s.throttled is None else (", ".join(s.throttle_flags) or "no")
    rows = [
        ("CPU load", f"{s.load[0]:.2f} / {s.load[1]:.2f} / {s.load[2]:.2f} ({s.cpus} CPUs)"),
        ("CPU temperature", temp),
        ("Throttling", throttled),
        ("Memory available", f"{size(s.mem_available)} of {size(s.mem_total)}"),
        ("Disk free", f"{size(s.disk_free)} of {size(s.disk_total)}"),
        ("Uptime", f"{s.uptime_s / 3600:.1f} h (service {s.process_uptime_s / 3600:.1f} h)"),
        ("Version", s.version),
    ]
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<section class="system"><h2>System</h2><table id="system">{cells}</table></section>'


def events(
    rows: list[EventRow], q: EventQuery, cameras: list[str], labels: list[str], tz: str | None
) -> str:
    def options(values: list[str], chosen: str | None) -> str:
        return '<option value="">all</option>' + "".join(
            f'<option{" selected" if v == chosen else ""} value="{esc(v)}">{esc(v)}</option>'
            for v in values
        )

    form = (
        '<form method="get" action="/events" class="filters">'
        f'<label>Camera <select name="camera">{options(cameras, q.camera)}</select></label>'
        f'<label>Label <select name="label">{options(labels, q.label)}</select></label>'
        '<label>Severity <select name="severity">'
        f"{options(['alert', 'detection'], q.severity)}</select></label>"
        f'<label>Zone <input name="zone" size="10" value="{esc(q.zone or "")}"></label>'
        f'<label>Day <input type="date" name="day" value="{esc(q.day or "")}"></label>'
        '<button type="submit">Filter</button></form>'
    )
    items = "".join(_event_li(r, tz) for r in rows) or ""
    more = ""
    if len(rows) >= q.limit and rows:
        given = (
            ("camera", q.camera),
            ("label", q.label),
            ("severity", q.severity),
            ("zone", q.zone),
            ("day", q.day),
        )
        params = {k: v for k, v in given if v}
        params["before"] = repr(rows[-1].started_at)
        more = f'<p><a href="/events?{esc(urlencode(params))}">Older events</a></p>'
    live = json.dumps(
        {
            "camera": q.camera or "",
            "label": q.label or "",
            "severity": q.severity or "",
            "zone": q.zone or "",
            "day": q.day or "",
        }
    )
    return (
        f"<h1>Events</h1>{form}"
        f'<ul id="events" class="events-list" data-filter=\'{esc(live)}\'>{items}</ul>'
        + ("" if rows else '<p id="no-events">No events.</p>')
        + more
    )


def event(row: EventRow, tz: str | None) -> str:
    a = row.artifacts
    media = []
    if "snapshot" in a:
        media.append(
            f'<figure><img id="snapshot" alt="snapshot" src="{esc(a["snapshot"]["url"])}">'
            "<figcaption>Snapshot</figcaption></figure>"
        )
    if "gif" in a and str(a["gif"]["url"]).endswith(".mp4"):  # gif.format mp4: an animation
        media.append(
            '<figure><video id="gif" autoplay loop muted playsinline '
            f'src="{esc(a["gif"]["url"])}"></video>'
            "<figcaption>Animation</figcaption></figure>"
        )
    elif "gif" in a:
        media.append(
            f'<figure><img id="gif" alt="animation" src="{esc(a["gif"]["url"])}">'
            "<figcaption>GIF</figcaption></figure>"
        )
    if "clip" in a:
        media.append(
            '<figure><video id="clip" controls preload="metadata" '
            f'src="{esc(a["clip"]["url"])}"></video>'
            "<figcaption>Clip</figcaption></figure>"
        )
    facts = [
        ("Camera", row.camera_id),
        ("Kind", row.kind),
        ("Severity", row.severity),
        ("Objects", row.summary() if row.objects else "-"),
        ("Labels", ", ".join(row.labels) or "-"),
        ("Top score", f"{row.top_score:.2f}"),
        ("Zones", ", ".join(row.zones) or "-"),
        ("Started", when(row.started_at, tz)),
        ("Ended", when(row.ended_at, tz)),
        ("Phase", row.phase),
    ]
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    return (
        f'<h1>Event {esc(row.id)}</h1><section class="media">'
        f"{''.join(media) or '<p>No media yet.</p>'}"
        f'</section><table class="facts">{cells}</table>'
    )


def live(cam_id: str, name: str, fps: float) -> str:
    return (
        f"<h1>{esc(name)}</h1>"
        f'<div class="live-stage" id="live-stage" data-camera="{esc(cam_id)}">'
        f'<img id="live" class="live" alt="live view of {esc(name)}" '
        f'src="/cameras/{esc(cam_id)}/stream.mjpeg">'
        '<svg id="live-boxes" preserveAspectRatio="none"></svg></div>'
        f'<p class="hint">Live view at {fps:g} fps, with what motion (yellow) and the detector '
        "(green) see. "
        f'<a href="/cameras/{esc(cam_id)}/timeline">Timeline</a> · '
        f'<a href="/cameras/{esc(cam_id)}/zones">Zones</a></p>'
    )


def config(
    data: dict[str, Any],
    csrf: str,
    can_write: bool,
    message: str,
    ok: bool,
    text: str = "",
    errors: str = "",
) -> str:
    """``text``: what the user wrote (kept after a rejection); ``errors``: the list of errors,
    each naming its key, shown right under the textarea."""
    import yaml

    dumped = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    form = ""
    if can_write:
        form = (
            '<h2>Change settings</h2><form method="post" action="/config" id="config-form">'
            f'{_csrf_field(csrf)}<textarea name="changes" rows="6" '
            f'placeholder="tracker:\n  end_after_s: 8">{esc(text)}</textarea>{errors}'
            '<button type="submit">Apply</button></form>'
        )
    msg = f'<p id="config-result" class="{"ok" if ok else "error"}">{esc(message)}</p>'
    return f'<h1>Configuration</h1>{msg}{form}<pre id="config">{esc(dumped)}</pre>'
