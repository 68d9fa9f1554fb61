"""``spyoncino selftest``: can this installation run? The updater's gate before a switch.

Checks, in order, and prints one line for each:

* every registered module imports (an entry point that fails to load is a broken install);
* the configuration loads;
* the configured detector model loads and runs one inference on a blank frame;
* the storage root is writable (a file is written, fsynced and removed).

Nothing here touches the event index or the media: it runs next to the live service.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from spyoncino.core.config import AppConfig, ConfigError, ConfigService, build_app_model
from spyoncino.core.orchestrator import ENTRY_POINT_GROUP, discover

Check = Callable[["Context"], str]


class Context:
    def __init__(self, config: Path | None, secrets: Path | None) -> None:
        self.config = config
        self.secrets = secrets
        self.app: AppConfig | None = None


def check_imports(ctx: Context) -> str:
    names = [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)]
    loaded = discover()
    missing = sorted(set(names) - set(loaded))
    if missing:
        raise RuntimeError("modules that do not import: " + ", ".join(missing))
    return f"{len(loaded)} modules import"


def check_config(ctx: Context) -> str:
    model = build_app_model(discover())
    try:
        service = ConfigService.load(model, config_path=ctx.config, secrets_path=ctx.secrets)
    except ConfigError as e:
        raise RuntimeError("; ".join(str(err) for err in e.errors)) from e
    ctx.app = service.current
    return "configuration loads (" + " < ".join(service.sources) + ")"


def check_detector(ctx: Context) -> str:
    import numpy as np

    from spyoncino.modules.process._detector_config import Config
    from spyoncino.modules.process._models import load_model

    app = ctx.app
    cfg: Any = (
        app.section("detector", Config)
        if app is not None and hasattr(app, "detector")
        else Config()
    )
    if not getattr(cfg, "enabled", True):
        return "detector disabled in the configuration"
    model = load_model(cfg)
    h, w = model.input_size
    result = model.run(np.zeros((h, w, 3), dtype=np.uint8))
    return f"detector {model.backend.name} ran one inference in {result.invoke_ms:.0f} ms"


def check_storage(ctx: Context) -> str:
    root = ctx.app.storage.root if ctx.app is not None else Path("var/spyoncino")
    root.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".selftest-", dir=root)
    try:
        os.write(fd, b"spyoncino selftest\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)
    return f"storage root {root} is writable"


#: run in this order; a release's own checks may be appended
CHECKS: list[tuple[str, Check]] = [
    ("imports", check_imports),
    ("config", check_config),
    ("detector", check_detector),
    ("storage", check_storage),
]


def run(config: Path | None = None, secrets: Path | None = None) -> int:
    """Run every check; 0 when all pass, 1 otherwise (what failed is printed)."""
    ctx = Context(config, secrets)
    failed = 0
    for name, check in CHECKS:
        try:
            line = check(ctx)
        except Exception as e:  # a selftest reports every failure, whatever it is
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        else:
            print(f"ok   {name}: {line}", flush=True)
    print("selftest " + ("passed" if not failed else f"failed ({failed} check(s))"), flush=True)
    return 0 if not failed else 1


def cmd_selftest(args: argparse.Namespace) -> int:
    return run(
        Path(args.config) if args.config else None, Path(args.secrets) if args.secrets else None
    )
