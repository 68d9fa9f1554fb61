"""What the core learns about a module comes from declarations on its class, not its name or
category: a third-party module gets the same treatment as ours by declaring the same thing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.config import AppConfig, ConfigService, Layer, build_app_model
from spyoncino.core.contracts import BaseModule, ModuleConfig
from spyoncino.core.orchestrator import Orchestrator


class _Cfg(ModuleConfig):
    type: Literal["acme"] = "acme"
    threads: int = Field(default=1, ge=1, le=64, description="worker threads")

    @classmethod
    def profile_defaults(cls, profile: Any) -> dict[str, Any]:
        return {"threads": profile.runtime.workers * 10}


class _Busy(BaseModule):
    """Reports queued work; whether the lockstep replay waits for it is its own declaration."""

    Config: ClassVar[type[ModuleConfig]] = ModuleConfig
    category: ClassVar[Any] = "event"

    async def configure(self, app: AppConfig) -> None:
        pass

    async def start(self) -> None:
        self.set_state("ok")

    queued: ClassVar[int] = 0

    def pending(self) -> int:
        return self.queued


def test_a_third_party_section_gets_its_defaults_from_the_hardware_profile(
    tmp_path: Path,
) -> None:
    class Acme(BaseModule):
        Config: ClassVar[type[ModuleConfig]] = _Cfg

    model = build_app_model({"acme": Acme})
    cfg = tmp_path / "config.yaml"
    cfg.write_text("cameras: {}\nruntime:\n  hardware_profile: pi-zero-2w\n")
    svc = ConfigService.load(model, config_path=cfg, environ={})
    assert svc.current.model_dump()["acme"]["threads"] == 20  # pi-zero-2w: 2 workers
    cfg.write_text("cameras: {}\nruntime:\n  hardware_profile: pi-zero-2w\nacme:\n  threads: 3\n")
    assert (
        ConfigService.load(model, config_path=cfg, environ={}).current.model_dump()["acme"][
            "threads"
        ]
        == 3
    )  # the owner's choice stays above the board's


async def test_the_lockstep_replay_waits_for_the_modules_that_declare_frame_stage() -> None:
    class Stage(_Busy):
        frame_stage: ClassVar[bool] = True
        queued: ClassVar[int] = 2

    class Processing(_Busy):  # the category alone does not make it one
        category: ClassVar[Any] = "process"
        queued: ClassVar[int] = 5

    registry: dict[str, type[BaseModule]] = {"stage": Stage, "processing": Processing}
    orch = Orchestrator(ConfigService(build_app_model(registry), [Layer("test", {})]), registry)
    await orch.start()
    try:
        assert orch.frame_work_pending() == 2
    finally:
        await orch.stop()


def test_the_watchdog_gives_a_slow_camera_the_frame_time_its_input_reports() -> None:
    """The watchdog reads the input's metrics (``max_fps``), not the module's private settings."""
    from types import SimpleNamespace

    from spyoncino.core.systemd import camera_liveness

    def slot(max_fps: float) -> SimpleNamespace:
        metrics = {"camera_state": "streaming", "last_frame_age_s": 4.0, "max_fps": max_fps}
        module = SimpleNamespace(metrics=lambda: metrics)
        return SimpleNamespace(camera_id="cam", state="running", module=module)

    slow, uncapped = camera_liveness([slot(0.5), slot(0.0)], frame_deadline=2.0)
    assert slow.alive  # one frame every 2 s: 6 s without one is still fine
    assert not uncapped.alive and "no frame for 4.0s" in uncapped.reason
