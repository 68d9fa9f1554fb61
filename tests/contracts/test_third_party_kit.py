"""The contract kit a third party runs (``pytest -p spyoncino.testing``) passes a proper module
installed through the entry point and fails each mistake the old shape-only kit let through:
a blocking ``configure``, a ``stop`` that is not idempotent, a subscription never released,
a ``start`` that raises something else than ``ModuleNotReady``/``ModuleConfigError``, and a
health that still says ``ok`` once stopped."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import ConfigDict, Field

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig
from spyoncino.testing import contract_problems

pytest_plugins = ["pytester"]

#: a third party's package: one module file and its entry-point line, nothing of ours touched
PACKAGE = """
from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

from pydantic import Field

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import BaseModule, ModuleConfig, ModuleContext
from spyoncino.core.bus import Message
from spyoncino.schemas import topics


class Config(ModuleConfig):
    type: Literal["acme_counter"] = "acme_counter"
    every: int = Field(default=2, ge=1, le=100, description="Count one in this many motions.")


class Counter(BaseModule[Config]):
    category = "event"
    Config: ClassVar[type[ModuleConfig]] = Config

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.every = 1
        self.seen = 0  # health() is asked before configure, too

    async def configure(self, app: AppConfig) -> None:
        self.every = self.config_of(app).every

    async def start(self) -> None:
        self.subscribe(topics.MOTION, self._on_motion, policy="block")
        self.spawn(self._tick(), "tick")
        self.set_state("ok")

    async def _on_motion(self, msg: Message[Any]) -> None:
        self.seen += 1

    async def _tick(self) -> None:
        await asyncio.Event().wait()  # a background task that runs until stopped

    def metrics(self) -> dict[str, float | int | str]:
        return {"seen": self.seen // self.every}
"""

#: mistakes, each on top of the good module; the checks each one must fail
MISTAKES = """
import time

from acme_counter import Counter
from spyoncino.testing import ContractCase, ModuleContract


class Sleepy(Counter):
    async def configure(self, app):
        await super().configure(app)
        time.sleep(0.8)  # blocks every camera for 0.8 s


class StopsOnce(Counter):
    async def stop(self):
        if getattr(self, "_gone", False):
            raise RuntimeError("already stopped")
        self._gone = True
        await super().stop()


class Leaky(Counter):
    async def start(self):
        await super().start()
        self.bus.subscribe("camera.*.frame", self._on_motion)  # never released


class Raises(Counter):
    async def start(self):
        raise RuntimeError("boom")


class Liar(Counter):
    async def stop(self):
        pass  # neither releases anything nor says it stopped


class TestMistakes(ModuleContract):
    cases = [
        ContractCase("acme_counter", cls, label=cls.__name__)
        for cls in (Sleepy, StopsOnce, Leaky, Raises, Liar)
    ]
"""


@pytest.fixture
def acme(pytester: pytest.Pytester) -> pytest.Pytester:
    """``acme_counter`` installed next to spyoncino: a package and its dist-info."""
    return install_acme(pytester)


def install_acme(pytester: pytest.Pytester) -> pytest.Pytester:
    site = pytester.mkdir("site")
    (site / "acme_counter").mkdir()
    (site / "acme_counter" / "__init__.py").write_text(PACKAGE)
    info = site / "acme_counter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-counter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[spyoncino.modules]\nacme_counter = acme_counter:Counter\n"
    )
    pytester.syspathinsert(site)
    return pytester


def outcomes(reprec: pytest.HookRecorder) -> dict[str, str]:
    out = {}
    for rep in reprec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" or rep.outcome != "passed":
            out[rep.nodeid.split("::")[-1]] = rep.outcome
    return out


def test_a_third_party_module_registered_by_entry_point_passes_the_kit(
    acme: pytest.Pytester,
) -> None:
    acme.makepyfile(
        test_acme=textwrap.dedent(
            """
            from spyoncino.core.orchestrator import discover
            from spyoncino.testing import ModuleContract, registered_cases


            def test_it_is_registered():
                assert "acme_counter" in discover()


            class TestAcme(ModuleContract):
                cases = [c for c in registered_cases() if c.name == "acme_counter"]
            """
        )
    )
    got = outcomes(acme.inline_run("-p", "spyoncino.testing", "-q"))
    assert got and set(got.values()) == {"passed"}, got
    assert len(got) == 9  # registration + the eight checks


def test_each_mistake_fails_the_check_that_names_it(acme: pytest.Pytester) -> None:
    acme.makepyfile(test_mistakes=MISTAKES)
    got = outcomes(acme.inline_run("-p", "spyoncino.testing", "-q"))
    failed = {k for k, v in got.items() if v == "failed"}
    sleepy, stops_once, leaky, raises, liar = "Sleepy", "StopsOnce", "Leaky", "Raises", "Liar"
    assert f"test_does_not_block_the_event_loop[{sleepy}]" in failed
    assert f"test_starts_and_stops_twice[{stops_once}]" in failed
    assert f"test_stop_releases_every_subscription_and_task[{leaky}]" in failed
    assert f"test_no_handler_runs_after_stop[{leaky}]" in failed
    assert f"test_starts_and_stops_twice[{raises}]" in failed
    assert f"test_health_is_reported_and_honest[{liar}]" in failed
    assert f"test_stop_releases_every_subscription_and_task[{liar}]" in failed
    # and nothing else: each check fails for what it names
    assert f"test_does_not_block_the_event_loop[{leaky}]" not in failed
    assert f"test_health_is_reported_and_honest[{sleepy}]" not in failed


def test_installed_next_to_us_it_breaks_none_of_our_doc_tests(pytester: pytest.Pytester) -> None:
    """Our generated config reference and our module pages cover our modules only: the doc
    tests end the same with a third-party module installed as without."""
    from spyoncino.cli.docgen import render
    from spyoncino.core.orchestrator import discover

    docs = str(Path(__file__).resolve().parents[1] / "test_docs.py")
    before = outcomes(pytester.inline_run(docs, "-q", "-p", "no:cacheprovider"))
    reference = render()
    install_acme(pytester)
    assert "acme_counter" in discover()
    after = outcomes(pytester.inline_run(docs, "-q", "-p", "no:cacheprovider"))
    assert len(after) == 2 and after == before
    assert render() == reference


# -- the shape checks (no event loop needed) -----------------------------------------------
class GoodConfig(ModuleConfig):
    type: Literal["good"] = "good"
    level: int = Field(default=1, ge=0, description="how much")


class Good(BaseModule[GoodConfig]):
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


def test_the_kit_is_importable_as_a_plugin(tmp_path: Path) -> None:
    import spyoncino.testing as kit

    assert callable(kit.pytest_generate_tests)
