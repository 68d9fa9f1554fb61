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
    noise: bool = False,
    decodes: list[int] | None = None,
) -> Frame:
    """A synthetic frame, lazily decoded: grey with white boxes and its seq written in.

    The seq is drawn as ten black/white squares along the top (see ``read_seq``), so a test
    can read back which frames an encoded clip or GIF holds. ``decodes`` (when given) gets
    the seq of every frame whose pixels were produced.
    """

    def decode() -> Any:
        if decodes is not None:
            decodes.append(seq)
        img = np.full((height, width, 3), 90, np.uint8)
        if colour is not None:
            img[:] = colour
        img[:, :, 1] = np.uint8((seq * 2) % 256)
        if noise:
            rng = np.random.default_rng(seq)
            img[:, :, 2] = rng.integers(0, 256, (height, width), dtype=np.uint8)
        for x1, y1, x2, y2 in boxes:
            img[y1:y2, x1:x2] = 255
        cell = width // 20
        for bit in range(10):
            img[0:cell, bit * cell : (bit + 1) * cell] = 255 if (seq >> bit) & 1 else 0
        return img

    luma = np.zeros((height // 4, width // 4), np.uint8)
    return Frame(camera, seq, t, 1_700_000_000.0 + t, width, height, luma, None, decode)


def read_seq(img: Any) -> int:
    """The seq ``make_frame`` wrote into a (decoded, possibly scaled) BGR image."""
    cell = img.shape[1] / 20
    seq = 0
    for bit in range(10):
        x, y = int((bit + 0.5) * cell), int(cell / 2)
        if img[y, x].mean() > 128:
            seq |= 1 << bit
    return seq


FrameFactory = Callable[..., Frame]


@pytest.fixture
def frame() -> FrameFactory:
    return make_frame
