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


async def test_a_state_file_holding_infinity_is_repaired(tmp_path: Path) -> None:
    """A mute until Infinity (an unbounded /mute once wrote it) silenced the box for good."""
    import time

    soon = time.time() + 600
    (tmp_path / "state.json").write_text(
        '{"armed": true, "muted_until": {"*": Infinity, "gate": NaN, "yard": 1e308, '
        f'"door": {soon}}}}}'
    )
    async with BusHarness(storage_root=tmp_path) as h:
        states = h.record("control.state")
        mod = h.build(ArmingState, {}, name="arming")
        await mod.configure(mod.ctx.app)
        await mod.start()
        state: ControlState = (await states.wait_for()).payload
        assert set(state.muted_until) == {"door"}
        await h.bus.publish(
            "control.command",
            ControlCommand(command="mute", camera_id="gate", duration_s=60, source="api"),
        )
        await h.bus.drain(timeout=2)
    text = (tmp_path / "state.json").read_text()
    assert "Infinity" not in text and "NaN" not in text and "e+308" not in text
    saved = json.loads(text)
    assert set(saved["muted_until"]) == {"door", "gate"}


def test_a_command_cannot_carry_an_unbounded_duration() -> None:
    import math

    import pytest
    from pydantic import ValidationError

    from spyoncino.schemas.control import MAX_MUTE_S

    for bad in (math.inf, math.nan, 1e308, MAX_MUTE_S + 1):
        with pytest.raises(ValidationError):
            ControlCommand(command="mute", duration_s=bad, source="api")
    assert ControlCommand(command="mute", duration_s=MAX_MUTE_S, source="api").duration_s
