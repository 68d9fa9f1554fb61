from __future__ import annotations

import json
from pathlib import Path

from spyoncino.modules.event.arming import ArmingState
from spyoncino.schemas.control import ControlCommand, ControlState
from spyoncino.testing import BusHarness


async def test_commands_change_state_which_survives_a_restart(tmp_path: Path) -> None:
    async with BusHarness(storage_root=tmp_path) as h:
        states = h.record("control.state")
        mod = h.build(ArmingState, {}, name="arming")
        await mod.configure(mod.ctx.app)
        await mod.start()
        first: ControlState = (await states.wait_for()).payload
        assert first.armed is True
        await h.bus.publish("control.command", ControlCommand(command="disarm", source="api"))
        await h.bus.publish(
            "control.command",
            ControlCommand(command="mute", camera_id="gate", duration_s=600, source="api"),
        )
        await h.bus.drain(timeout=2)
        last: ControlState = states.payloads[-1]
        assert last.armed is False and set(last.muted_until) == {"gate"}
        await mod.stop()
        saved = json.loads((tmp_path / "state.json").read_text())
        assert saved["armed"] is False
        again = h.build(ArmingState, {}, name="arming")
        await again.configure(again.ctx.app)
        await again.start()
        await h.bus.drain(timeout=2)
        assert states.payloads[-1].armed is False
        assert "gate" in states.payloads[-1].muted_until
        await h.bus.publish(
            "control.command", ControlCommand(command="unmute", camera_id="gate", source="api")
        )
        await h.bus.publish("control.command", ControlCommand(command="arm", source="api"))
        await h.bus.drain(timeout=2)
        assert states.payloads[-1] == ControlState(armed=True, muted_until={})


async def test_unreadable_state_file_falls_back_to_the_default(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    async with BusHarness(storage_root=tmp_path) as h:
        states = h.record("control.state")
        mod = h.build(ArmingState, {"arming": {"armed_at_first_start": False}}, name="arming")
        await mod.configure(mod.ctx.app)
        await mod.start()
        assert (await states.wait_for()).payload.armed is False
