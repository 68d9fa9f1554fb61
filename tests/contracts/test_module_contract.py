"""Every module registered under the ``spyoncino.modules`` entry points honours the contract.

The checks are the ones a third party runs on its own module (``spyoncino.testing.contract``,
loaded as a plugin by ``tests/conftest.py``): one test per check and module.
"""

from __future__ import annotations

from spyoncino.core.orchestrator import discover
from spyoncino.testing import ModuleContract


def test_the_slice_modules_are_registered() -> None:
    assert {"file", "motion", "tracker", "snapshot", "index", "arming"} <= set(discover())


class TestEveryRegisteredModule(ModuleContract):
    """``cases`` unset: every registered module, inputs on the shipped sample clip."""
