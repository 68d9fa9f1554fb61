"""Every module registered under the ``spyoncino.modules`` entry points honours the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from spyoncino.core.contracts import BaseModule, ModuleConfigError, ModuleNotReady
from spyoncino.core.orchestrator import discover
from spyoncino.testing import BusHarness, contract_problems

REGISTRY = discover()


def test_the_slice_modules_are_registered() -> None:
    assert {"file", "motion", "tracker", "snapshot", "index", "arming"} <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_module_honours_the_contract(name: str) -> None:
    cls = REGISTRY[name]
    assert issubclass(cls, BaseModule)
    assert contract_problems(name, cls) == []


@pytest.mark.parametrize("name", sorted(REGISTRY))
async def test_module_survives_start_stop_twice(name: str, tmp_path: Path) -> None:
    cls = REGISTRY[name]
    data: dict[str, object] = {}
    camera_id = None
    if cls.per_camera:
        if not cls.accepts("spyoncino:sample.mp4"):
            pytest.skip(f"{name} reads hardware or network sources; covered by its own tests")
        camera_id = "cam"
        data["cameras"] = {"cam": {"source": "spyoncino:sample.mp4"}}
    async with BusHarness(storage_root=tmp_path) as h:
        module = h.build(cls, data, name=name, camera_id=camera_id, others=REGISTRY)
        for _ in range(2):
            try:
                await module.configure(module.ctx.app)
                await module.start()
            except (ModuleNotReady, ModuleConfigError) as e:
                # a module whose hardware/secret is missing must say so, not crash
                message = str(e)
                assert message
            await module.stop()
            await module.stop()  # stop is idempotent
        assert module.health().module


@pytest.mark.parametrize("name", sorted(REGISTRY))
async def test_check_changes_nothing(name: str, tmp_path: Path) -> None:
    """A config update checks every module before any adopts it: check must not adopt."""
    cls = REGISTRY[name]
    data: dict[str, object] = {}
    camera_id = None
    if cls.per_camera:
        if not cls.accepts("spyoncino:sample.mp4"):
            pytest.skip(f"{name} reads hardware or network sources; covered by its own tests")
        camera_id = "cam"
        data["cameras"] = {"cam": {"source": "spyoncino:sample.mp4"}}
    async with BusHarness(storage_root=tmp_path) as h:
        module = h.build(cls, data, name=name, camera_id=camera_id, others=REGISTRY)
        try:
            await module.configure(module.ctx.app)
        except (ModuleNotReady, ModuleConfigError):
            pytest.skip(f"{name} cannot be configured here (missing library or secret)")
        before = {k: (id(v), repr(v)[:200]) for k, v in vars(module).items()}
        await module.check(module.ctx.app)
        after = {k: (id(v), repr(v)[:200]) for k, v in vars(module).items()}
        assert after == before
