"""``spyoncino doctor`` (what this box can see) and ``spyoncino models``."""

from __future__ import annotations

import argparse
import sys

from spyoncino import __version__
from spyoncino.cli._common import EXIT_CONFIG, load, optional, print_config_errors
from spyoncino.core.config import AppConfig, ConfigError
from spyoncino.core.orchestrator import discover


def cmd_doctor(args: argparse.Namespace) -> int:
    print(f"spyoncino {__version__} on Python {sys.version.split()[0]}")
    registry = discover()
    print("modules: " + ", ".join(sorted(registry)))
    try:
        _r, service = load(args)
        app: AppConfig | None = service.current
        print("config: valid (" + " < ".join(service.sources) + ")")
    except ConfigError as e:
        app = None
        print("config: INVALID")
        for err in e.errors:
            print(f"  - {err}")
    from spyoncino.platform.profiles import profile_report

    override = app.runtime.hardware_profile if app is not None else None
    for line in profile_report(override=override):
        print(line)
    if app is not None:
        from spyoncino.helpers.doctor import inputs_report

        for line in inputs_report(app):
            print(line)
    return 0 if app is not None else EXIT_CONFIG


def cmd_models(args: argparse.Namespace) -> int:
    try:
        _r, service = load(args)
    except ConfigError as e:
        print_config_errors(e)
        return EXIT_CONFIG
    fn = optional("spyoncino.modules.process.detector", "describe_models")
    if fn is None:
        print("no detector module is installed")
        return 1
    for line in fn(service.current):
        print(line)
    return 0
