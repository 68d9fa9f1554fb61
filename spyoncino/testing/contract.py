"""The module contract as a pytest suite a third party runs on its own module.

Load the plugin (``pytest -p spyoncino.testing``, or ``pytest_plugins = ["spyoncino.testing"]``
in your top-level ``conftest.py``) and subclass ``ModuleContract``::

    from spyoncino.testing import ContractCase, ModuleContract

    class TestMyModule(ModuleContract):
        cases = [ContractCase("my_module", MyModule, {"my_module": {"threshold": 3}})]

Every ``test_*`` method below then runs once per case. Without ``cases`` the suite runs over
every module registered under the ``spyoncino.modules`` entry points (what this project's own
``tests/contracts/`` does). Each check says what a user would notice when it fails:

* the config section is declared properly, and a bad value names its key;
* the module starts and stops twice, ``stop`` is idempotent, bounded and safe after a failed
  start (a module that cannot start here must raise ``ModuleNotReady`` or
  ``ModuleConfigError`` with a message, never something else);
* ``stop`` releases every bus subscription and task, so no handler runs after it returned;
* ``health()`` answers before start, after a (failed) start and after stop, and does not say
  ``ok`` once stopped;
* no callback blocks the event loop for longer than ``slow_callback_s`` (asyncio debug mode's
  slow-callback detection, after a first cycle so one-off lazy imports do not count, and in
  two cycles in a row so a machine that descheduled the process once does not count either);
* ``check`` changes nothing (a config update checks every module before any adopts it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from spyoncino.core.bus import Message
from spyoncino.core.config import ConfigError
from spyoncino.core.contracts import BaseModule, ModuleConfigError, ModuleNotReady

R = TypeVar("R")

#: the source a per-camera input is given when it accepts it (a clip shipped in the package)
SAMPLE_SOURCE = "spyoncino:sample.mp4"


@dataclass(frozen=True)
class ContractCase:
    """One module to check: its entry-point name, class and config."""

    name: str
    cls: type[BaseModule]
    #: the config file's content for this case (``{name: {...}, "cameras": {...}}``)
    data: Mapping[str, Any] = field(default_factory=dict)
    #: per-camera modules: the camera the instance serves
    camera_id: str | None = None
    #: other registered modules whose sections ``data`` may name
    others: Mapping[str, type[BaseModule]] = field(default_factory=dict)
    #: why this case cannot run here (the checks skip with that reason)
    skip: str | None = None
    #: the test id (default: the instance name)
    label: str | None = None

    @property
    def instance(self) -> str:
        return f"{self.name}:{self.camera_id}" if self.camera_id else self.name


def registered_cases() -> list[ContractCase]:
    """One case per module registered under the ``spyoncino.modules`` entry points."""
    from spyoncino.core.orchestrator import discover

    registry = discover()
    out = []
    for name, cls in sorted(registry.items()):
        if cls.per_camera:
            if not cls.accepts(SAMPLE_SOURCE):
                out.append(
                    ContractCase(
                        name, cls, others=registry, skip="reads hardware or network sources"
                    )
                )
                continue
            data = {"cameras": {"cam": {"source": SAMPLE_SOURCE}}}
            out.append(ContractCase(name, cls, data, camera_id="cam", others=registry))
        else:
            out.append(ContractCase(name, cls, others=registry))
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every ``ModuleContract`` check once per case of its class."""
    if "contract_case" not in metafunc.fixturenames or metafunc.cls is None:
        return
    if not issubclass(metafunc.cls, ModuleContract):
        return
    cases = list(metafunc.cls.contract_cases())
    metafunc.parametrize("contract_case", cases, ids=[c.label or c.instance for c in cases])


# -- running a scenario on a fresh loop in debug mode -------------------------------------------
class _SlowCallbacks(logging.Handler):
    """asyncio's debug mode logs ``Executing <handle> took 0.6 seconds``: collect them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        #: what each measured cycle reported
        self.cycles: list[list[str]] = []
        self.counting = False

    def start_cycle(self) -> None:
        self.cycles.append([])
        self.counting = True

    def emit(self, record: logging.LogRecord) -> None:
        if self.counting and str(record.msg).startswith("Executing"):
            self.cycles[-1].append(record.getMessage())


def run_debug(
    scenario: Callable[[_SlowCallbacks], Coroutine[Any, Any, R]], slow_callback_s: float
) -> tuple[R, list[list[str]]]:
    """Run ``scenario`` on a new event loop in asyncio debug mode; also return the slow
    callbacks it reported, per cycle it measured (``start_cycle``)."""
    slow = _SlowCallbacks()
    log = logging.getLogger("asyncio")
    log.addHandler(slow)
    try:
        with asyncio.Runner(debug=True) as runner:
            runner.get_loop().slow_callback_duration = slow_callback_s
            result = runner.run(scenario(slow))
    finally:
        log.removeHandler(slow)
    return result, slow.cycles


@dataclass
class _Run:
    """What one scenario saw."""

    started: bool = False
    start_error: str | None = None
    calls_after_stop: list[str] = field(default_factory=list)
    subscriptions_left: list[str] = field(default_factory=list)
    tasks_left: list[str] = field(default_factory=list)
    health: dict[str, tuple[str, str]] = field(default_factory=dict)


class ModuleContract:
    """Subclass it with ``cases = [ContractCase(...)]``; each check runs once per case."""

    #: the modules to check; None: every module registered under the entry points
    cases: ClassVar[Iterable[ContractCase] | None] = None
    #: a callback running longer than this blocks every camera: the check fails
    slow_callback_s: ClassVar[float] = 0.5
    #: one ``stop`` must return within this
    stop_timeout_s: ClassVar[float] = 10.0

    @classmethod
    def contract_cases(cls) -> list[ContractCase]:
        return list(cls.cases) if cls.cases is not None else registered_cases()

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _skip_if_needed(case: ContractCase) -> None:
        if case.skip:
            pytest.skip(f"{case.name}: {case.skip}")

    async def _lifecycle(
        self,
        case: ContractCase,
        root: Path,
        slow: _SlowCallbacks | None = None,
        cycles: int = 2,
    ) -> _Run:
        from spyoncino.testing import BusHarness

        run = _Run()
        async with BusHarness(storage_root=root) as h:
            loop = asyncio.get_running_loop()
            subs_before = len(h.bus.status().subscriptions)
            tasks_before = asyncio.all_tasks(loop)
            handlers: list[tuple[str, list[int]]] = []
            stopped = False
            original = h.bus.subscribe

            def counting_subscribe(pattern: Any, handler: Any, **kwargs: Any) -> Any:
                calls = [0]

                async def counted(msg: Message[Any]) -> None:
                    if stopped:
                        calls[0] += 1
                    await handler(msg)

                handlers.append((str(pattern), calls))
                return original(pattern, counted, **kwargs)

            h.bus.subscribe = counting_subscribe  # type: ignore[method-assign]
            module = h.build(
                case.cls, case.data, name=case.name, camera_id=case.camera_id, others=case.others
            )
            run.health["built"] = _health(module)
            for cycle in range(cycles):
                if slow is not None and cycle > 0:
                    slow.start_cycle()
                stopped = False
                try:
                    await module.configure(module.ctx.app)
                    run.health["configured"] = _health(module)
                    await module.start()
                    run.started = True
                except (ModuleNotReady, ModuleConfigError) as e:
                    # a module whose hardware, library or secret is missing says so
                    if not str(e):
                        pytest.fail(f"{case.name}: {type(e).__name__} without a message")
                    run.start_error = f"{type(e).__name__}: {e}"
                    run.health["failed start"] = _health(module)
                else:
                    run.health["started"] = _health(module)
                for attempt in ("stop", "second stop"):
                    try:
                        await asyncio.wait_for(module.stop(), self.stop_timeout_s)
                    except TimeoutError:
                        pytest.fail(f"{case.name}: {attempt} took over {self.stop_timeout_s} s")
                    except Exception as e:
                        pytest.fail(f"{case.name}: {attempt} raised {e!r} (stop is idempotent)")
                stopped = True
                run.health["stopped"] = _health(module)
            if slow is not None:
                slow.counting = False
            # released subscriptions' delivery tasks end on their next turn
            leftover = [t for t in asyncio.all_tasks(loop) - tasks_before if not t.done()]
            if leftover:
                await asyncio.wait(leftover, timeout=1.0)
            run.tasks_left = sorted(
                t.get_name() for t in asyncio.all_tasks(loop) - tasks_before if not t.done()
            )
            now = h.bus.status().subscriptions
            run.subscriptions_left = [f"{s.module} on {s.pattern}" for s in now[subs_before:]]
            # what each pattern the module ever subscribed to would have delivered
            probe = h.bus.check_payloads
            h.bus.check_payloads = False
            for pattern, _ in handlers:
                for one in pattern.split(","):
                    await h.bus.publish(one.replace("*", "x").replace("#", "x"), None)  # type: ignore[arg-type]
            h.bus.check_payloads = probe
            await h.bus.drain(timeout=1.0)
            run.calls_after_stop = [p for p, calls in handlers if calls[0]]
        return run

    def _run(
        self, case: ContractCase, tmp_path: Path, cycles: int = 2
    ) -> tuple[_Run, list[list[str]]]:
        self._skip_if_needed(case)
        return run_debug(
            lambda slow: self._lifecycle(case, tmp_path, slow, cycles), self.slow_callback_s
        )

    # -- the checks ---------------------------------------------------------------------------
    def test_declares_a_proper_config(self, contract_case: ContractCase) -> None:
        from spyoncino.testing import contract_problems

        assert contract_problems(contract_case.name, contract_case.cls) == []

    def test_a_bad_value_names_its_key(self, contract_case: ContractCase) -> None:
        from spyoncino.testing import BusHarness

        case = contract_case
        fields = [f for f in case.cls.Config.model_fields if f not in ("type", "enabled")]
        if not fields:
            pytest.skip(f"{case.name} has no settings of its own")

        async def check() -> list[str]:
            problems = []
            async with BusHarness() as h:
                for fname in fields:
                    for bad in _BAD_VALUES:
                        data = {**case.data, case.name: {fname: bad}}
                        try:
                            h.app_config({case.name: case.cls, **case.others}, data)
                        except ConfigError as e:
                            if f"{case.name}.{fname}" not in str(e):
                                problems.append(f"{fname}={bad!r}: {e}")
                            break
            return problems

        problems, _ = run_debug(lambda _slow: check(), self.slow_callback_s)
        assert problems == [], f"{case.name}: errors that do not name the key"

    def test_starts_and_stops_twice(self, contract_case: ContractCase, tmp_path: Path) -> None:
        run, _ = self._run(contract_case, tmp_path)
        assert run.started or run.start_error

    def test_stop_releases_every_subscription_and_task(
        self, contract_case: ContractCase, tmp_path: Path
    ) -> None:
        run, _ = self._run(contract_case, tmp_path)
        assert run.subscriptions_left == [], "still subscribed after stop"
        assert run.tasks_left == [], "tasks still running after stop"

    def test_no_handler_runs_after_stop(self, contract_case: ContractCase, tmp_path: Path) -> None:
        run, _ = self._run(contract_case, tmp_path)
        assert run.calls_after_stop == [], "handlers called after stop returned"

    def test_health_is_reported_and_honest(
        self, contract_case: ContractCase, tmp_path: Path
    ) -> None:
        case = contract_case
        run, _ = self._run(case, tmp_path)
        for when, (module, _state) in run.health.items():
            assert module == case.instance, f"health {when} names {module!r}"
        if "failed start" in run.health:
            assert run.health["failed start"][1] != "ok", "ok after a failed start"
        assert run.health["stopped"][1] != "ok", "health says ok after stop"

    def test_does_not_block_the_event_loop(
        self, contract_case: ContractCase, tmp_path: Path
    ) -> None:
        _, cycles = self._run(contract_case, tmp_path, cycles=3)
        if cycles and all(cycles):
            pytest.fail(
                f"{contract_case.name}: callbacks over {self.slow_callback_s} s in every cycle"
                f" (asyncio debug): {cycles[-1][:3]}"
            )

    def test_check_changes_nothing(self, contract_case: ContractCase, tmp_path: Path) -> None:
        from spyoncino.testing import BusHarness

        case = contract_case
        self._skip_if_needed(case)

        async def scenario() -> tuple[dict[str, Any], dict[str, Any]] | None:
            async with BusHarness(storage_root=tmp_path) as h:
                module = h.build(
                    case.cls,
                    case.data,
                    name=case.name,
                    camera_id=case.camera_id,
                    others=case.others,
                )
                try:
                    await module.configure(module.ctx.app)
                except (ModuleNotReady, ModuleConfigError):
                    return None
                before = {k: (id(v), repr(v)[:200]) for k, v in vars(module).items()}
                await module.check(module.ctx.app)
                after = {k: (id(v), repr(v)[:200]) for k, v in vars(module).items()}
                return before, after

        seen, _ = run_debug(lambda _slow: scenario(), self.slow_callback_s)
        if seen is None:
            pytest.skip(f"{case.name} cannot be configured here (missing library or secret)")
        assert seen[1] == seen[0], "check() changed the module"


#: values no sensible setting accepts, tried in turn until the schema refuses one
_BAD_VALUES: tuple[object, ...] = (
    {"not": "a setting"},
    ["not", "a", "setting"],
    -(10**12),
    "not-a-valid-value-\u00a7",
)


def _health(module: BaseModule) -> tuple[str, str]:
    h = module.health()
    return h.module, h.state
