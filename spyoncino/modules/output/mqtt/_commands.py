"""Commands from the broker, checked and turned into bus payloads.

Every command topic takes a short text payload. Anything else (too long, not UTF-8, an unknown
camera or verb, a number out of range) is refused with a reason the module logs and counts;
nothing here raises for bad input.
"""

from __future__ import annotations

import math
from typing import Any

from spyoncino.schemas.control import MAX_MUTE_S, ConfigUpdate, ControlCommand

SOURCE = "mqtt"
_TRUE = {"on", "true", "1", "yes", "arm", "armed"}
_FALSE = {"off", "false", "0", "no", "disarm", "disarmed"}


class Rejected(Exception):
    """A command that is not one; the message is the reason (no payload in it)."""


def _switch(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise Rejected("expected ON or OFF")


def _seconds(text: str) -> float | None:
    """Mute length: seconds (0 or OFF: unmute, ON: the default length) -> None for unmute."""
    word = text.strip().lower()
    if word in ("on", ""):
        return -1.0  # the arming module's default length
    if word in ("off", "0"):
        return None
    try:
        value = float(word)
    except ValueError:
        raise Rejected("expected seconds, ON or OFF") from None
    if not math.isfinite(value) or value < 0 or value > MAX_MUTE_S:
        raise Rejected(f"seconds must be within 0..{int(MAX_MUTE_S)}")
    return value if value > 0 else None


def parse(
    prefix: str, topic: str, raw: bytes, cameras: set[str], max_bytes: int, request_id: str
) -> ControlCommand | ConfigUpdate:
    """The bus payload for a message on one of the command topics under ``prefix``."""
    if len(raw) > max_bytes:
        raise Rejected(f"payload of {len(raw)} bytes is over the {max_bytes}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("payload is not UTF-8 text") from None
    if any(ord(c) < 32 and c not in "\t\r\n" for c in text):
        raise Rejected("payload holds control characters")
    rest = topic[len(prefix) + 1 :] if topic.startswith(prefix + "/") else ""
    parts = rest.split("/")
    camera: str | None = None
    if len(parts) == 3:
        camera, parts = parts[0], parts[1:]
        if camera not in cameras:
            raise Rejected("unknown camera")
    verb = "/".join(parts)
    kw: dict[str, Any] = {"source": SOURCE, "request_id": request_id}
    if verb == "set/armed" and camera is None:
        return ControlCommand(command="arm" if _switch(text) else "disarm", **kw)
    if verb == "set/mute":
        seconds = _seconds(text)
        if seconds is None:
            return ControlCommand(command="unmute", camera_id=camera, **kw)
        duration = None if seconds < 0 else seconds
        return ControlCommand(command="mute", camera_id=camera, duration_s=duration, **kw)
    if verb == "set/detect" and camera is not None:
        on = _switch(text)
        return ConfigUpdate(
            changes={"cameras": {camera: {"detector": {"enabled": on}}}},
            source=SOURCE,
            request_id=request_id,
        )
    if verb == "snapshot/take" and camera is not None:
        return ControlCommand(command="snapshot", camera_id=camera, **kw)
    raise Rejected("unknown command topic")
