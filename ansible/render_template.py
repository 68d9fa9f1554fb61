#!/usr/bin/env python3
"""Render a template of the spyoncino role without running Ansible (for the image builder).

The role's defaults are the variables; ``--set name=value`` (YAML value) and ``--vars FILE``
override them, the way inventory variables do. Only the filters the role's templates use are
provided. Example, a unit for a Pi 4 image:

    python3 ansible/render_template.py spyoncino.service.j2 --set spyoncino_memory_max=50% \
        > rootfs/etc/systemd/system/spyoncino.service
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import jinja2
import yaml

ROLE = Path(__file__).resolve().parent / "roles" / "spyoncino"


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "true", "1", "on", "y")
    return bool(value)


def _to_nice_yaml(value: Any, indent: int = 2, **_: Any) -> str:
    return yaml.safe_dump(value, indent=indent, default_flow_style=False, sort_keys=True)


def _combine(*dicts: dict[str, Any], recursive: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if recursive and isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = _combine(out[k], v, recursive=True)
            else:
                out[k] = v
    return out


def variables(overrides: list[str], files: list[Path]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()) or {}
    for f in files:
        data.update(yaml.safe_load(f.read_text()) or {})
    for item in overrides:
        name, _, raw = item.partition("=")
        data[name] = yaml.safe_load(raw) if raw else ""
    return data


def render(template: str, data: dict[str, Any]) -> str:
    # systemd units and YAML, not HTML: escaping would corrupt them
    env = jinja2.Environment(  # noqa: S701
        loader=jinja2.FileSystemLoader(str(ROLE / "templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,  # what Ansible's template module does
    )
    env.filters.update(bool=_bool, to_nice_yaml=_to_nice_yaml, combine=_combine)
    return env.get_template(template).render(**data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", help="file name under roles/spyoncino/templates")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--vars", action="append", default=[], type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.template, variables(args.set, args.vars)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
