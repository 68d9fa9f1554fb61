"""``spyoncino update``: hands over to the standalone A/B updater (docs/updates.md)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

#: the standalone updater the role installs (runs with the system Python, not this venv)
UPDATER = Path("/opt/spyoncino/bin/spyoncino-update")


def update_argv(args: argparse.Namespace) -> list[str]:
    """``spyoncino update ...`` as the updater's own command line."""
    argv = [args.action]
    for flag in ("version", "index_url", "wheel"):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), value]
    for folder in args.find_links:
        argv += ["--find-links", folder]
    for flag in ("check", "force", "pre"):
        if getattr(args, flag):
            argv.append("--" + flag)
    return argv


def cmd_update(args: argparse.Namespace) -> int:
    """Over-the-air update through the A/B updater (docs/updates.md), which runs on its own."""
    argv = update_argv(args)
    if UPDATER.is_file():
        os.execv("/usr/bin/python3", ["/usr/bin/python3", str(UPDATER), *argv])  # noqa: S606
    # a development checkout: the same code, from this package
    return subprocess.call([sys.executable, "-m", "spyoncino.updater", *argv])
