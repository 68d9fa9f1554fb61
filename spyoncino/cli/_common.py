"""What the commands share: loading the configuration, printing its errors, the preflight."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from spyoncino.core.config import (
    AppConfig,
    ConfigError,
    ConfigService,
    build_app_model,
)
from spyoncino.core.contracts import BaseModule
from spyoncino.core.orchestrator import discover, plan

EXIT_CONFIG = 2


def load(
    args: argparse.Namespace, *, saved_changes: bool = False
) -> tuple[dict[str, type[BaseModule]], ConfigService]:
    registry = discover()
    model = build_app_model(registry)
    service = ConfigService.load(
        model,
        config_path=Path(args.config) if getattr(args, "config", None) else None,
        secrets_path=Path(args.secrets) if getattr(args, "secrets", None) else None,
        overlay_path="auto" if saved_changes else None,
    )
    return registry, service


def print_config_errors(e: ConfigError) -> None:
    print(f"configuration has {len(e.errors)} error(s):", file=sys.stderr)
    for err in e.errors:
        print(f"  - {err}", file=sys.stderr)


def preflight(registry: dict[str, type[BaseModule]], app: AppConfig) -> list[str]:
    """Everything the planned modules can tell is wrong before a run (missing files, ...)."""
    problems: list[str] = []
    for _instance, cls, camera_id in plan(registry, app):
        problems.extend(p for p in cls.preflight(app, camera_id) if p not in problems)
    return problems


def optional(module: str, func: str) -> Callable[..., Any] | None:
    try:
        fn = getattr(import_module(module), func)
    except (ImportError, AttributeError):
        return None
    return fn  # type: ignore[no-any-return]
