"""The helpers in ``spyoncino.testing`` catch what a third-party author would get wrong."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig
from spyoncino.testing import contract_problems


class GoodConfig(ModuleConfig):
    type: Literal["good"] = "good"
    level: int = Field(default=1, ge=0, description="how much")


class Good(BaseModule):
    Config: ClassVar[type[ModuleConfig]] = GoodConfig

    async def configure(self, app: AppConfig) -> None:
        pass

    async def start(self) -> None:
        pass


class LooseConfig(ModuleConfig):
    model_config = ConfigDict(extra="allow", frozen=False)
    type: Literal["other"] = "other"
    level: int = 1


class Loose(Good):
    Config: ClassVar[type[ModuleConfig]] = LooseConfig


def test_a_good_module_has_no_problems() -> None:
    assert contract_problems("good", Good) == []


def test_problems_are_named() -> None:
    problems = contract_problems("loose", Loose)
    assert any("Literal['loose']" in p for p in problems)
    assert any("extra='forbid'" in p for p in problems)
    assert any("frozen" in p for p in problems)
    assert any("Config.level has no description" in p for p in problems)
