"""Core names no feature: ``spyoncino/core/`` imports no module and names none of them.

A module is added by registering it (its own file, its entry point); nothing in the core may
have to change for it, so nothing in the core may know a module's name, its config section,
its category or its private state. Today's exceptions are listed below, each with where it
goes; the list may only shrink: a new one fails, and so does one that is gone but still listed.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "spyoncino" / "core"

#: our own packages core may import (payloads and itself)
ALLOWED_IMPORTS = ("spyoncino.core", "spyoncino.schemas")
#: the categories a module declares; only the contract itself (contracts.py) lists them
CATEGORIES = {"storage", "service", "output", "dashboard", "event", "process", "input"}
#: module names that are also core vocabulary (``BaseModule.health()``, health reports)
VOCABULARY = {"health"}

KNOWN: set[str] = {
    # config.py: builds the hardware-profile layer (each module's section gives its defaults,
    # ModuleConfig.profile_defaults); goes when the loader is handed the layer instead
    "config.py imports spyoncino.platform.profiles",
    # config.py: err.get("input") is pydantic's error-detail key (the bad value), not the category
    "config.py names category 'input'",
    # profiles.py: the old name of platform/profiles.py, for roles older than the move that
    # run `python -m spyoncino.core.profiles`; goes when no supported role calls it
    "profiles.py imports spyoncino.platform.profiles",
}


def module_names() -> set[str]:
    """Our modules' entry-point names (their config sections), from pyproject.toml."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(data["project"]["entry-points"]["spyoncino.modules"]) - VOCABULARY


def findings(core: Path = CORE) -> set[str]:
    names = module_names()
    found: set[str] = set()
    for path in sorted(core.glob("*.py")):
        f = path.name
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom | ast.Import):
                mods = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                for m in mods:
                    if m.startswith("spyoncino") and not m.startswith(ALLOWED_IMPORTS):
                        found.add(f"{f} imports {m}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                v = node.value
                head = v.split(".")[0].split(":")[0]
                if v in names or (head in names and ("." in v or ":" in v) and " " not in v):
                    found.add(f"{f} names {v!r}")
                if v in CATEGORIES and f != "contracts.py":
                    found.add(f"{f} names category {v!r}")
            elif isinstance(node, ast.Attribute) and node.attr in names:
                found.add(f"{f} reads .{node.attr}")
    return found


def test_core_imports_no_module() -> None:
    assert not [x for x in findings() if " imports spyoncino.modules" in x]


def test_core_names_no_feature_beyond_the_known_exceptions() -> None:
    found = findings()
    assert sorted(found - KNOWN) == [], "core must not name a feature: move it into the module"
    assert sorted(KNOWN - found) == [], "gone from core: remove it from KNOWN (the list shrinks)"


def test_the_check_sees_a_feature_named_in_core(tmp_path: Path) -> None:
    """The scan is not vacuous: a config key, an import and an attribute are each caught."""
    (tmp_path / "x.py").write_text(
        "from spyoncino.modules.process.motion import Config\n"
        "key = 'motion.width'\n"
        "def f(app):\n    return app.tracker\n"
    )
    assert findings(tmp_path) == {
        "x.py imports spyoncino.modules.process.motion",
        "x.py names 'motion.width'",
        "x.py reads .tracker",
    }
