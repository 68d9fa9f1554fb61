"""``spyoncino check-config`` and ``spyoncino schema``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spyoncino.cli._common import EXIT_CONFIG, load, preflight, print_config_errors
from spyoncino.core.config import (
    ConfigError,
    ConfigService,
    build_app_model,
    dump_config,
)
from spyoncino.core.orchestrator import discover


def _leaves(data: Any, loc: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(data, dict) and data:
        return [leaf for k, v in data.items() for leaf in _leaves(v, (*loc, str(k)))]
    return [(loc, data)]


def show_with_origins(service: ConfigService) -> list[str]:
    """``key: value  # layer`` for every setting, so an owner sees where each one came from."""
    from spyoncino.core.config import value_origin

    lines = []
    for loc, value in _leaves(dump_config(service.current)):
        shown = json.dumps(value) if not isinstance(value, str) else value
        lines.append(f"{'.'.join(loc)}: {shown}  # {value_origin(service.layers, loc)}")
    return lines


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        registry, service = load(args, saved_changes=True)
        problems = preflight(registry, service.current)
        if problems:
            raise ConfigError(problems)
    except ConfigError as e:
        print_config_errors(e)
        return EXIT_CONFIG
    if not any(cam.enabled for cam in service.current.cameras.values()):
        # not an error: the service still runs its status page, where a camera can be added
        print("warning: no camera is configured (add one under cameras:), nothing is watched")
    if service.overlay_error:
        print(f"warning: {service.overlay_error}")
    print("configuration is valid; layers: " + " < ".join(service.sources))
    if args.show:
        print("\n".join(show_with_origins(service)))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from spyoncino.schemas import PAYLOADS

    registry = discover()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_app_model(registry)
    written = []
    config_schema = model.model_json_schema()
    config_schema["title"] = "Spyoncino configuration (config.yaml)"
    (out / "config.schema.json").write_text(json.dumps(config_schema, indent=2) + "\n")
    written.append("config.schema.json")
    for payload in PAYLOADS:
        name = f"{payload.__name__}.schema.json"
        (out / name).write_text(json.dumps(payload.model_json_schema(), indent=2) + "\n")
        written.append(name)
    print(f"wrote {len(written)} JSON Schemas to {out}/")
    return 0
