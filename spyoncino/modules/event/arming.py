"""Armed / muted state: the one owner of ``arm``, ``disarm``, ``mute`` and ``unmute``.

Commands arrive on ``control.command`` (from Telegram, the status page or the CLI); the state
is published on ``control.state`` after every change and at start, and kept in
``<storage root>/state.json`` so a restart (or a power cut) does not silently re-arm or disarm
the box. A mute lasts at most ``MAX_MUTE_S`` (7 days); a state file holding a longer or
non-finite one (an older version could write ``Infinity``) is repaired at start. Outputs
read ``control.state`` to decide whether to alert; events are still recorded while disarmed,
so the owner can look back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig, ModuleContext
from spyoncino.helpers.files import atomic_write_bytes
from spyoncino.schemas import topics
from spyoncino.schemas.control import MAX_MUTE_S, ControlCommand, ControlState

ALL_CAMERAS = "*"


class Config(ModuleConfig):
    type: Literal["arming"] = "arming"
    armed_at_first_start: bool = Field(
        default=True, description="Armed when no saved state exists (a fresh install alerts)."
    )
    default_mute_s: float = Field(
        default=3600.0, gt=0.0, le=7 * 86400.0, description="Mute length when none is given."
    )


def _sane(until: float, now: float) -> bool:
    """A mute end a command could have set: finite and at most ``MAX_MUTE_S`` ahead."""
    return math.isfinite(until) and until <= now + MAX_MUTE_S + 60.0


class ArmingState(BaseModule[Config]):
    category: ClassVar[Any] = "event"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.path = Path("state.json")
        self.armed = True
        self.muted_until: dict[str, float] = {}
        self.commands = 0

    async def configure(self, app: AppConfig) -> None:
        self.cfg = self.config_of(app)
        self.path = app.storage.root / "state.json"

    async def start(self) -> None:
        self._load()
        self.subscribe(topics.CONTROL.name, self._on_command, policy="block")
        await self._publish()
        self.set_state("ok", "armed" if self.armed else "disarmed")

    def _load(self) -> None:
        self.armed = self.cfg.armed_at_first_start
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.armed = bool(data.get("armed", self.armed))
            now = self.ctx.clock.time()
            saved = {str(k): float(v) for k, v in dict(data.get("muted_until", {})).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as e:
            self.log.warning("state_file_unreadable", path=str(self.path), error=repr(e))
            return
        self.muted_until = {k: v for k, v in saved.items() if v > now}
        # Infinity, NaN or a mute beyond the longest one may ask for (an older version wrote
        # them): such a mute would never end, so it is dropped and the file repaired
        bad = [k for k, v in self.muted_until.items() if not _sane(v, now)]
        if bad:
            for k in bad:
                del self.muted_until[k]
            self.log.warning("state_file_repaired", path=str(self.path), dropped_mutes=bad)
            self._save()

    def _save(self) -> None:
        now = self.ctx.clock.time()
        mutes = {k: v for k, v in self.muted_until.items() if _sane(v, now)}
        data = json.dumps({"armed": self.armed, "muted_until": mutes}, allow_nan=False).encode()
        atomic_write_bytes(self.path, data)

    def state(self) -> ControlState:
        now = self.ctx.clock.time()
        self.muted_until = {k: v for k, v in self.muted_until.items() if v > now}
        return ControlState(armed=self.armed, muted_until=dict(self.muted_until))

    async def _publish(self) -> None:
        await self.bus.publish(topics.CONTROL_STATE.name, self.state())

    async def _on_command(self, msg: Message[ControlCommand]) -> None:
        cmd = msg.payload
        if cmd.command not in ("arm", "disarm", "mute", "unmute"):
            return
        self.commands += 1
        key = cmd.camera_id or ALL_CAMERAS
        if cmd.command == "arm":
            self.armed = True
        elif cmd.command == "disarm":
            self.armed = False
        elif cmd.command == "mute":
            seconds = min(cmd.duration_s or self.cfg.default_mute_s, MAX_MUTE_S)
            self.muted_until[key] = self.ctx.clock.time() + seconds
        else:
            self.muted_until.pop(key, None)
        self.log.info(
            "control_command", command=cmd.command, camera=cmd.camera_id, source=cmd.source
        )
        await self.ctx.executor.run(self._save)
        self.set_state("ok", "armed" if self.armed else "disarmed")
        await self._publish()

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "armed": int(self.armed),
            "muted": len(self.state().muted_until),
            "commands": self.commands,
        }
