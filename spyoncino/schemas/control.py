"""Control plane: commands from people and configuration changes."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from spyoncino.schemas.base import Payload

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def manual_event_ids(request_id: str, cameras: Sequence[str]) -> list[tuple[str, str]]:
    """(camera, event id) of what a command asked for now: ``manual-<request id>`` (made safe
    for a file name; the time when empty), with the camera appended when there are several.
    The modules that answer a snapshot or clip command name their artifacts this way, and the
    askers wait for that name."""
    tag = _SAFE.sub("", request_id)[:40] or time.strftime("%Y%m%dT%H%M%S")
    if len(cameras) == 1:
        return [(cameras[0], f"manual-{tag}")]
    return [(cid, f"manual-{tag}-{cid}") for cid in cameras]


CommandName = Literal["arm", "disarm", "snapshot", "mute", "unmute", "clip"]

#: The longest mute any command may ask for (7 days): a forgotten mute must end by itself.
MAX_MUTE_S = 7 * 86400.0


class ControlCommand(Payload):
    """Published on ``control.command``; the module that owns the state carries it out."""

    command: CommandName
    camera_id: str | None = None
    duration_s: float | None = Field(
        default=None,
        ge=0,
        le=MAX_MUTE_S,
        allow_inf_nan=False,
        description="mute length or clip length (s); at most MAX_MUTE_S",
    )
    source: str = Field(description="who asked: telegram:<chat>, api, cli")
    request_id: str = ""


class ControlState(Payload):
    """Published on ``control.state`` whenever armed/muted state changes."""

    armed: bool
    muted_until: dict[str, float] = Field(default_factory=dict)


class ConfigUpdate(Payload):
    """A partial configuration change (nested dict, same shape as the YAML file)."""

    changes: dict[str, Any]
    source: str = "api"
    request_id: str = ""


class ConfigSnapshot(Payload):
    """The configuration in force after a change, secrets redacted."""

    version: int = Field(ge=1)
    config: dict[str, Any]
    changed_modules: tuple[str, ...] = ()
    request_id: str = ""


class ConfigRejected(Payload):
    version: int = Field(ge=1, description="the version still in force")
    reason: str
    errors: tuple[str, ...] = ()
    request_id: str = ""
