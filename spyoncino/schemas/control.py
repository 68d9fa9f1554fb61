"""Control plane: commands from people and configuration changes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from spyoncino.schemas.base import Payload

CommandName = Literal["arm", "disarm", "snapshot", "mute", "unmute", "clip"]


class ControlCommand(Payload):
    """Published on ``control.command``; the module that owns the state carries it out."""

    command: CommandName
    camera_id: str | None = None
    duration_s: float | None = Field(default=None, ge=0)
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
