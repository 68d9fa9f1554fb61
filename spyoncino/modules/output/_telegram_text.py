"""What the Telegram bot says: captions, command replies, durations. Pure functions, no I/O
except the disk and the CPU temperature (run in the executor); events come from the index's
answer to ``events_request`` (the bot never opens the index database)."""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import time as dtime
from pathlib import Path
from typing import Any

from spyoncino.helpers.files import local_time
from spyoncino.helpers.system import cpu_temperature as cpu_temperature
from spyoncino.schemas.control import MAX_MUTE_S, ControlState
from spyoncino.schemas.health import CameraHealthNotice
from spyoncino.schemas.index import EventsPage, EventsQuery
from spyoncino.schemas.status import HealthReport, ModuleHealth

ALL_CAMERAS = "*"

#: (command, menu description) in menu order; the menu is set with setMyCommands.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("status", "Armed state, cameras, last events, disk"),
    ("snapshot", "Photo now: /snapshot [camera]"),
    ("clip", "Short video now: /clip [camera] [seconds]"),
    ("events", "Last events: /events [n] [alerts|detections] [camera] [label] [zone:z] [2h]"),
    ("arm", "Alert on events"),
    ("disarm", "Stop alerts (events are still recorded)"),
    ("mute", "Silence alerts: /mute <duration> [camera]"),
    ("unmute", "End a mute: /unmute [camera]"),
    ("health", "State of every module"),
    ("update", "Check for a newer version and install it (admins)"),
    ("help", "What the bot understands"),
)

HELP = """Spyoncino commands:
/status - armed state, cameras, last events, disk free
/snapshot [camera] - a photo now (every camera when none is named)
/clip [camera] [seconds] - a short video now
/events [n] [alerts|detections] [camera] [label] [zone:name] [2h|today] - the last n events
  (default 5), only those matching what is given
/arm - alert on events
/disarm - stop alerts; events are still recorded
/mute <duration> [camera] - e.g. /mute 30m, /mute 2h front_door
/unmute [camera] - end a mute
/health - state of every module
/update [check | version] - a newer version? install it with a confirm button (admins)
Buttons under an alert: Mute 1 h (that camera), Snapshot, Disarm."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(min|sec|d|h|m|s)?", re.IGNORECASE)
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "sec": 1.0}


def quoted(text: str, limit: int = 20) -> str:
    """``text`` for a reply: quoted and cut short (a chat may send 4,096 characters)."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``2h30m``, ``1d``; a bare number is minutes. Seconds out."""
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            raise ValueError(f"not a duration: {quoted(text)}")
        unit = m.group(2) or ("m" if m.end() == len(s) and pos == 0 else "")
        if not unit:
            raise ValueError(f"not a duration: {quoted(text)} (add a unit: s, m, h, d)")
        total += float(m.group(1)) * _UNITS[unit]
        pos = m.end()
    if pos != len(s) or total <= 0:
        raise ValueError(f"not a duration: {quoted(text)}")
    if not math.isfinite(total) or total > MAX_MUTE_S:
        raise ValueError(f"too long: {quoted(text)}")
    return total


def format_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    parts = []
    if d:
        parts.append(f"{d} d")
    if h:
        parts.append(f"{h} h")
    if m and not d:
        parts.append(f"{m} min")
    return " ".join(parts)


def in_quiet_hours(now_local: dtime, start: dtime | None, end: dtime | None) -> bool:
    """Whether ``now_local`` falls in [start, end), which may wrap midnight."""
    if start is None or end is None or start == end:
        return False
    if start < end:
        return start <= now_local < end
    return now_local >= start or now_local < end


@dataclass(frozen=True)
class AlertInfo:
    """What a caption says about an event (an activity)."""

    event_id: str
    camera_id: str
    camera_name: str
    kind: str
    labels: tuple[str, ...]
    score: float
    zones: tuple[str, ...]
    started_at: float
    #: (label, how many objects of it) in the activity, in order of appearance
    counts: tuple[tuple[str, int], ...] = ()
    #: the last moment seen so far (or the end, once it closed); None: the start
    until: float | None = None


_PLURAL = {"person": "people", "bus": "buses", "mouse": "mice", "sheep": "sheep"}


def counted(label: str, n: int) -> str:
    """``1 person``, ``2 people``, ``3 cars``."""
    return f"{n} {label if n == 1 else _PLURAL.get(label, label + 's')}"


def caption(info: AlertInfo, tz: str | None, status_url: str | None) -> str:
    """``2 people, 1 car · Front door · 14:02-14:03`` (date, zones and link below)."""
    start = local_time(info.started_at, tz)
    span = start.strftime("%H:%M")
    if info.until is not None:
        end = local_time(info.until, tz).strftime("%H:%M")
        if end != span:
            span = f"{span}\u2013{end}"
    if info.kind == "object" and info.counts:
        seen = ", ".join(counted(label, n) for label, n in info.counts)
    elif info.kind == "object" and info.labels:
        seen = ", ".join(info.labels)
    else:
        seen = "motion"
    lines = [f"{seen} \u00b7 {info.camera_name} \u00b7 {span}", start.strftime("%Y-%m-%d")]
    if info.zones:
        lines.append("zone: " + ", ".join(info.zones))
    if status_url:
        lines.append(f"{status_url.rstrip('/')}/events/{info.event_id}")
    return "\n".join(lines)


def summary_line(count: int, camera_name: str) -> str:
    return f"{count} events on {camera_name} while offline; the latest:"


def over_budget_line(count: int, camera_name: str) -> str:
    return f"(+{count} more on {camera_name} not sent: alert rate limit)"


def state_text(state: ControlState, now: float, tz: str | None, names: Mapping[str, str]) -> str:
    lines = ["Armed" if state.armed else "Disarmed (events are still recorded)"]
    for key, until in sorted(state.muted_until.items()):
        if until <= now:
            continue
        who = "all cameras" if key == ALL_CAMERAS else names.get(key, key)
        lines.append(
            f"Muted {who} for {format_duration(until - now)} "
            f"(until {local_time(until, tz).strftime('%H:%M')})"
        )
    return "\n".join(lines)


def camera_health(health: HealthReport | None, camera_id: str) -> ModuleHealth | None:
    if health is None:
        return None
    for m in health.modules:
        if m.module.endswith(f":{camera_id}"):
            return m
    return None


def status_text(
    *,
    state: ControlState,
    health: HealthReport | None,
    names: Mapping[str, str],
    events: Iterable[Mapping[str, Any]],
    disk: tuple[int, int] | None,
    uptime_s: float,
    temperature_c: float | None,
    now: float,
    tz: str | None,
) -> str:
    lines = [state_text(state, now, tz, names), "", "Cameras:"]
    for cid, name in names.items():
        mh = camera_health(health, cid)
        if mh is None:
            lines.append(f"- {name}: no report yet")
            continue
        fps = mh.metrics.get("fps")
        fps_text = f", {float(fps):.1f} fps" if isinstance(fps, (int, float)) else ""
        detail = f" ({mh.detail})" if mh.detail and mh.state != "ok" else ""
        problems = camera_problems(health, cid)
        problem_text = f"; problem: {', '.join(problems)}" if problems else ""
        lines.append(f"- {name}: {mh.state}{fps_text}{detail}{problem_text}")
    rows = list(events)
    lines.append("")
    lines.append("Last events:" if rows else "Last events: none")
    lines.extend(event_line(r, names, tz) for r in rows)
    lines.append("")
    if disk is not None:
        free, total = disk
        pct = 100.0 * free / total if total else 0.0
        lines.append(f"Disk free: {free / 1e9:.1f} GB ({pct:.0f}%)")
    lines.append(f"Uptime: {format_duration(uptime_s)}")
    if temperature_c is not None:
        lines.append(f"CPU temperature: {temperature_c:.1f} C")
    return "\n".join(lines)


def health_text(health: HealthReport | None) -> str:
    if health is None:
        return "No health report yet."
    lines = [f"Overall: {health.overall}"]
    for m in health.modules:
        extra = f" - {m.detail}" if m.detail else ""
        lines.append(f"- {m.module}: {m.state}{extra}")
    return "\n".join(lines)


def event_line(row: Mapping[str, Any], names: Mapping[str, str], tz: str | None) -> str:
    cam = names.get(str(row["camera_id"]), str(row["camera_id"]))
    when = local_time(float(row["started_at"]), tz).strftime("%m-%d %H:%M:%S")
    counts: dict[str, int] = {}
    for o in sorted(row.get("objects") or [], key=lambda o: o.get("label") != "person"):
        counts[str(o.get("label"))] = counts.get(str(o.get("label")), 0) + 1
    if counts:
        labels = ", ".join(counted(label, n) for label, n in counts.items())
    else:
        labels = ", ".join(row.get("labels") or []) or str(row.get("kind", "event"))
    score = float(row.get("top_score") or 0.0)
    score_text = f" {score:.0%}" if score > 0 else ""
    detection = " (detection)" if row.get("severity") == "detection" else ""
    return f"- {when} {cam}: {labels}{score_text}{detection}"


@dataclass(frozen=True)
class EventFilter:
    """What ``/events`` was asked for."""

    limit: int = 5
    severity: str | None = None
    camera: str | None = None
    label: str | None = None
    zone: str | None = None
    since: float | None = None


_SINCE = re.compile(r"^(\d{1,4})([hd])$")


def parse_events_args(
    args: Iterable[str], names: Mapping[str, str], now: float, tz: str | None
) -> EventFilter | str:
    """``/events 10 alerts front_door person zone:porch 2h`` -> a filter, or what is wrong."""
    out: dict[str, Any] = {}
    by_name = {n.lower(): cid for cid, n in names.items()} | {c.lower(): c for c in names}
    for raw in args:
        word = raw.strip()
        low = word.lower()
        if word.isdigit():
            out["limit"] = max(1, min(50, int(word)))
        elif low in ("alert", "alerts"):
            out["severity"] = "alert"
        elif low in ("detection", "detections"):
            out["severity"] = "detection"
        elif low in by_name:
            out["camera"] = by_name[low]
        elif low.startswith("zone:") and len(word) > 5:
            out["zone"] = word[5:]
        elif low == "today":
            midnight = local_time(now, tz).replace(hour=0, minute=0, second=0, microsecond=0)
            out["since"] = midnight.timestamp()
        elif m := _SINCE.match(low):
            out["since"] = now - int(m.group(1)) * (3600 if m.group(2) == "h" else 86400)
        elif re.fullmatch(r"[a-z][a-z _-]{0,30}", low):
            out["label"] = low
        else:
            return (
                f"Not understood: {quoted(word)}. Usage: /events [n] [alerts|detections] "
                "[camera] [label] [zone:name] [2h|today]"
            )
    return EventFilter(**out)


def events_text(
    rows: list[dict[str, Any]], names: Mapping[str, str], tz: str | None, filtered: bool = False
) -> str:
    if not rows:
        return "No events match." if filtered else "No events recorded yet."
    return "\n".join([f"Last {len(rows)} events:", *(event_line(r, names, tz) for r in rows)])


# -- blocking helpers (run them in the executor) ------------------------------------------------
def events_request(limit: int, flt: EventFilter | None = None) -> EventsQuery:
    """What ``/events`` (or ``/status``'s last events) asks the index: the newest ``limit``
    activities that match ``flt``, without their media."""
    if flt is None:
        return EventsQuery(limit=limit, with_artifacts=False)
    return EventsQuery(
        limit=limit,
        severity=flt.severity,
        camera=flt.camera,
        label=flt.label,
        zone=flt.zone,
        after=flt.since,
        with_artifacts=False,
    )


def event_dicts(page: EventsPage) -> list[dict[str, Any]]:
    """The index's answer as the rows ``event_line`` and ``status_text`` format."""
    return [
        {
            "id": r.id,
            "camera_id": r.camera_id,
            "kind": r.kind,
            "labels": list(r.labels),
            "top_score": r.top_score,
            "started_at": r.started_at,
            "severity": r.severity,
            "objects": list(r.objects),
        }
        for r in page.events
    ]


def disk_free(path: Path) -> tuple[int, int] | None:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None
    return usage.free, usage.total


def camera_problems(health: HealthReport | None, camera_id: str) -> list[str]:
    """The camera-health conditions raised now for ``camera_id`` (the health module reports
    ``camera_health.<camera>.<condition>`` = 1), in words."""
    out: list[str] = []
    for m in health.modules if health else ():
        for key, value in m.metrics.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[:2] == ["camera_health", camera_id] and value == 1:
                out.append(parts[2].replace("_", " "))
    return out


def health_notice_text(notice: CameraHealthNotice, tz: str | None) -> str:
    """A camera-health alert or recovery as a plain message: what, on which camera, when."""
    when = local_time(notice.at, tz).strftime("%Y-%m-%d %H:%M:%S")
    head = "Camera alert" if notice.phase == "alert" else "Camera recovered"
    return f"{head}: {notice.message}\n{when}"
