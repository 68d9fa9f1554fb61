"""Helpers for testing modules, ours and third parties': a bus harness, a synthetic camera and
the contract every registered module must pass, as a pytest plugin (``pytest -p
spyoncino.testing``; see ``spyoncino.testing.contract`` and ``docs/modules/contract.md``).

Example::

    async with BusHarness() as h:
        rec = h.record("event.#")
        module = h.build(MyModule, {"my_module": {"threshold": 3}})
        await module.configure(module.ctx.app)
        await module.start()
        await h.bus.publish("process.motion.detected", ...)
        msg = await rec.wait_for(lambda m: m.topic.endswith("started"))
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args, get_origin

import numpy as np

from spyoncino.core.bus import Bus, Message
from spyoncino.core.clock import SYSTEM_CLOCK, Clock
from spyoncino.core.config import AppConfig, Layer, build_app_model, validate
from spyoncino.core.contracts import BaseModule, BoundedExecutor, ModuleConfig, ModuleContext
from spyoncino.schemas.frames import Frame


class Recorder:
    """Collects every message on a pattern; ``wait_for`` awaits one that matches."""

    def __init__(self) -> None:
        self.messages: list[Message[Any]] = []
        self._changed = asyncio.Event()

    async def __call__(self, msg: Message[Any]) -> None:
        self.messages.append(msg)
        self._changed.set()

    @property
    def payloads(self) -> list[Any]:
        return [m.payload for m in self.messages]

    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    async def wait_for(
        self, predicate: Callable[[Message[Any]], bool] = lambda m: True, timeout: float = 5.0
    ) -> Message[Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for msg in self.messages[seen:]:
                if predicate(msg):
                    return msg
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message within {timeout}s; got {self.topics()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue


class BusHarness:
    """A real bus and executor for module tests; closes everything on exit."""

    def __init__(
        self, storage_root: Path | None = None, *, clock: Clock | None = None, **bus_kwargs: Any
    ) -> None:
        #: every module built here reads and sleeps on this (pass a ``FakeClock`` to drive it)
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        bus_kwargs.setdefault("status_interval", 0)
        # a payload of the wrong type for its topic fails the test at the publish
        bus_kwargs.setdefault("check_payloads", True)
        self.bus = Bus(**bus_kwargs)
        self.executor = BoundedExecutor(workers=2)
        self.storage_root = storage_root
        self.modules: list[BaseModule] = []

    async def __aenter__(self) -> BusHarness:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for m in reversed(self.modules):
            with contextlib.suppress(Exception):  # cleanup goes on for the other modules
                await m.stop()
        await self.bus.close()
        self.executor.shutdown()

    def record(
        self, pattern: str, policy: Literal["latest", "block", "drop_oldest"] = "block"
    ) -> Recorder:
        rec = Recorder()
        self.bus.subscribe(pattern, rec, policy=policy, maxsize=10_000, module="recorder")
        return rec

    def app_config(
        self, modules: Mapping[str, type[BaseModule]], data: Mapping[str, Any] | None = None
    ) -> AppConfig:
        raw: dict[str, Any] = dict(data or {})
        if self.storage_root is not None:
            storage = dict(raw.get("storage", {}))
            storage.setdefault("root", str(self.storage_root))
            raw["storage"] = storage
        return validate(build_app_model(modules), [Layer("test", raw)])

    def build(
        self,
        cls: type[BaseModule],
        data: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        camera_id: str | None = None,
        others: Mapping[str, type[BaseModule]] | None = None,
    ) -> BaseModule:
        """Instantiate ``cls`` registered as ``name`` with config ``data``."""
        reg_name = name or cls.name or cls.__name__.lower()
        cls.name = reg_name
        registry = {reg_name: cls, **(others or {})}
        app = self.app_config(registry, data)
        instance = f"{reg_name}:{camera_id}" if camera_id else reg_name
        ctx = ModuleContext(
            bus=self.bus,
            executor=self.executor,
            app=app,
            instance=instance,
            camera_id=camera_id,
            clock=self.clock,
        )
        module = cls(ctx)
        self.modules.append(module)
        return module


def synthetic_frames(
    camera_id: str = "synthetic",
    *,
    width: int = 640,
    height: int = 360,
    count: int = 30,
    luma_width: int = 320,
    moving_box: tuple[int, int] | None = (80, 120),
    noise: float = 2.0,
    seed: int = 0,
    fps: float = 10.0,
) -> Iterator[Frame]:
    """A fake camera: a grey background with sensor noise and, optionally, a bright box that
    walks from left to right."""
    rng = np.random.default_rng(seed)
    background = np.full((height, width, 3), 90, np.uint8)
    t0 = time.monotonic()
    for i in range(count):
        img = background.copy()
        if moving_box is not None:
            bw, bh = moving_box
            x = int((width - bw) * i / max(1, count - 1))
            y = (height - bh) // 2
            img[y : y + bh, x : x + bw] = 230
        if noise:
            img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
        import cv2

        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        lh = round(height * luma_width / width)
        luma = np.asarray(
            cv2.resize(grey, (luma_width, lh), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
        yield Frame(
            camera_id=camera_id,
            seq=i,
            mono_ts=t0 + i / fps,
            wall_ts=time.time() + i / fps,
            width=width,
            height=height,
            luma=luma,
            _image=img,
        )


def contract_problems(name: str, cls: type[BaseModule]) -> list[str]:
    """What keeps ``cls`` (registered as ``name``) from honouring the module contract."""
    problems = []
    if not issubclass(cls, BaseModule):
        return [f"{name}: {cls} does not subclass BaseModule"]
    cfg = cls.Config
    if cfg is ModuleConfig or not issubclass(cfg, ModuleConfig):
        problems.append(f"{name}: has no Config(ModuleConfig) of its own")
    else:
        field = cfg.model_fields.get("type")
        if field is None:
            problems.append(f"{name}: Config has no `type` field")
        elif get_origin(field.annotation) is not Literal or get_args(field.annotation) != (name,):
            problems.append(
                f"{name}: Config.type must be Literal[{name!r}], got {field.annotation}"
            )
        if cfg.model_config.get("extra") != "forbid":
            problems.append(f"{name}: Config must set extra='forbid'")
        if not cfg.model_config.get("frozen"):
            problems.append(f"{name}: Config must be frozen")
        for fname, f in cfg.model_fields.items():
            if fname not in ("type",) and not f.description:
                problems.append(f"{name}: Config.{fname} has no description")
    if cls.Camera is not None:
        if cls.Camera.model_config.get("extra") != "forbid":
            problems.append(f"{name}: Camera options must set extra='forbid'")
        for fname, f in cls.Camera.model_fields.items():
            if not f.description:
                problems.append(f"{name}: Camera.{fname} has no description")
    return problems


# the contract suite and its pytest hook: loading this module as a plugin registers the hook
from spyoncino.testing.clock import FakeClock  # noqa: E402
from spyoncino.testing.contract import (  # noqa: E402  (needs the harness above)
    ContractCase,
    ModuleContract,
    pytest_generate_tests,
    registered_cases,
    run_debug,
)

__all__ = [
    "BusHarness",
    "ContractCase",
    "FakeClock",
    "ModuleContract",
    "Recorder",
    "contract_problems",
    "pytest_generate_tests",
    "registered_cases",
    "run_debug",
    "synthetic_frames",
]
