"""A module's own typed config section, without repeating ``app.section(name, Config)``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig
from spyoncino.testing import BusHarness


class CounterConfig(ModuleConfig):
    type: Literal["counter"] = "counter"
    step: int = Field(default=1, ge=1, le=10, description="How much one tick adds.")


class Counter(BaseModule[CounterConfig]):
    Config: ClassVar[type[ModuleConfig]] = CounterConfig

    async def configure(self, app: AppConfig) -> None:
        self.step = self.config_of(app).step  # typed: an int, mypy knows it

    async def start(self) -> None:
        self.set_state("ok")


async def test_config_is_the_modules_own_section_of_the_last_config() -> None:
    async with BusHarness() as h:
        module = h.build(Counter, {"counter": {"step": 3}}, name="counter")
        assert isinstance(module, Counter)
        assert module.config == CounterConfig(step=3)
        newer = h.app_config({"counter": Counter}, {"counter": {"step": 5}})
        await module.configure(newer)
        assert module.step == 5
        assert module.config.step == 3  # ctx.app is what the orchestrator handed it last
        module.ctx.app = newer
        assert module.config.step == 5


async def test_a_bare_module_still_sees_a_plain_module_config() -> None:
    class Bare(BaseModule):
        async def configure(self, app: AppConfig) -> None:
            pass

        async def start(self) -> None:
            pass

    async with BusHarness() as h:
        module = h.build(Bare, {}, name="bare")
        assert isinstance(module.config, ModuleConfig)


async def test_before_registration_the_section_is_the_one_config_type_names() -> None:
    from spyoncino.core.contracts import ModuleContext

    class Unregistered(Counter):
        name = ""

    async with BusHarness() as h:
        app = h.app_config({"counter": Counter}, {"counter": {"step": 4}})
        module = Unregistered(ModuleContext(bus=h.bus, executor=h.executor, app=app, instance="c"))
        assert module.config.step == 4
