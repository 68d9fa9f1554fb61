"""``spyoncino run`` without ``--forever`` ends when its file sources end, but a camera added
while it runs (the first-run page, the API) keeps it running: the owner just added it."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

from spyoncino.core.config import ConfigService, Layer, build_app_model
from spyoncino.core.orchestrator import Orchestrator, discover
from spyoncino.schemas.control import ConfigUpdate
from tests.support.wait import until as wait_until

SAMPLE = Path(__file__).resolve().parents[2] / "spyoncino" / "data" / "sample.mp4"


until = partial(wait_until, timeout=60.0)


def _orchestrator(tmp_path: Path, cameras: dict[str, Any]) -> tuple[Orchestrator, list[bool]]:
    reg = {"file": discover()["file"]}
    data = {"storage": {"root": str(tmp_path)}, "cameras": cameras}
    orch = Orchestrator(ConfigService(build_app_model(reg), [Layer("test", data)]), reg)
    seen: list[bool] = []
    real = orch.inputs_finished

    def spy() -> bool:  # every check the run loop makes, in order
        seen.append(real())
        return seen[-1]

    orch.inputs_finished = spy  # type: ignore[method-assign]
    return orch, seen


def _porch(orch: Orchestrator) -> Any:
    return next((s.module for s in orch.slots if s.camera_id == "porch"), None)


async def test_a_file_camera_added_live_does_not_end_the_run(tmp_path: Path) -> None:
    orch, seen = _orchestrator(tmp_path, {})
    run = asyncio.create_task(orch.run(install_signals=False, exit_when_inputs_end=True))
    try:
        await until(lambda: seen)  # running, no camera: the first-run page's state
        ok = await orch.apply(
            ConfigUpdate(
                changes={"cameras": {"porch": {"source": str(SAMPLE), "file": {"pace": "fast"}}}},
                source="web",
                request_id="first-run",
            )
        )
        assert ok
        await until(lambda: _porch(orch) is not None and _porch(orch).is_finished())
        # the loop has looked at least twice since the file ended, and it is still running
        after = len(seen)
        await until(lambda: len(seen) >= after + 2 or run.done())
        assert not run.done(), "the run ended when the camera added live reached its end"
    finally:
        orch.request_stop()
        await run


async def test_a_run_started_with_a_file_still_ends_with_it(tmp_path: Path) -> None:
    orch, _ = _orchestrator(tmp_path, {"porch": {"source": str(SAMPLE), "file": {"pace": "fast"}}})
    assert (
        await asyncio.wait_for(
            orch.run(install_signals=False, exit_when_inputs_end=True), timeout=120
        )
        == 0
    )
