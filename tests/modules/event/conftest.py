"""A real bus and real modules, wired by hand: the harness the event-module tests share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spyoncino.core.bus import Bus, Message
from spyoncino.core.config import AppConfig, build_app_model
from spyoncino.core.contracts import BaseModule, BoundedExecutor, ModuleContext
from spyoncino.schemas.frames import Frame


class Harness:
    """Builds an AppConfig from the given module classes and runs modules on one bus."""

    def __init__(self, bus: Bus, executor: BoundedExecutor, root: Path) -> None:
        self.bus = bus
        self.executor = executor
        self.root = root
        self.classes: dict[str, type[BaseModule]] = {}
        self.modules: list[BaseModule] = []
        self.seen: list[tuple[str, Any]] = []

    def app(self, classes: dict[str, type[BaseModule]], data: dict[str, Any]) -> AppConfig:
        for name, cls in classes.items():
            cls.name = name
        self.classes.update(classes)
        model = build_app_model(self.classes)
        data = {"storage": {"root": str(self.root)}, **data}
        return model.model_validate(data)

    async def start(self, cls: type[BaseModule], app: AppConfig) -> Any:
        ctx = ModuleContext(bus=self.bus, executor=self.executor, app=app, instance=cls.name)
        mod = cls(ctx)
        await mod.configure(app)
        await mod.start()
        self.modules.append(mod)
        return mod

    def record(self, pattern: str) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []

        async def on(msg: Message[Any]) -> None:
            out.append((msg.topic, msg.payload))

        self.bus.subscribe(pattern, on, policy="block", maxsize=10_000, module="test")
        return out

    async def settle(self) -> None:
        await self.bus.drain(timeout=10.0)

    async def stop(self) -> None:
        for m in reversed(self.modules):
            await m.stop()
        self.modules.clear()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=2)
    h = Harness(bus, executor, tmp_path / "media")
    try:
        yield h
    finally:
        await h.stop()
        await bus.close()
        await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)


def make_frame(
    camera: str,
    seq: int,
    t: float,
    width: int = 640,
    height: int = 360,
    colour: tuple[int, int, int] | None = None,
    boxes: tuple[tuple[int, int, int, int], ...] = (),
) -> Frame:
    """A synthetic frame: grey background (or ``colour``) with white boxes, lazily decoded."""

    def decode() -> Any:
        img = np.full((height, width, 3), 90, np.uint8)
        if colour is not None:
            img[:] = colour
        img[:, :, 1] = np.uint8((seq * 7) % 255)  # changes every frame, so encoders see motion
        for x1, y1, x2, y2 in boxes:
            img[y1:y2, x1:x2] = 255
        return img

    luma = np.zeros((height // 4, width // 4), np.uint8)
    return Frame(camera, seq, t, 1_700_000_000.0 + t, width, height, luma, None, decode)


FrameFactory = Callable[..., Frame]


@pytest.fixture
def frame() -> FrameFactory:
    return make_frame
