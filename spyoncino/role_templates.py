"""Render the Ansible role's templates without Ansible: ``spyoncino install-unit``, the image.

The role (``ansible/roles/spyoncino``) is the one source of the systemd unit and the config
templates; the wheel carries it as ``spyoncino/data/role`` so that a board installed by hand
with pip renders exactly what ``ansible-playbook provision.yml`` would. The role's defaults
are the variables; overrides work the way inventory variables do. Only the filters the
role's templates use are provided. Needs jinja2 and PyYAML, nothing else of ours, so
``ansible/render_template.py`` can load this file straight from a checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

#: the role inside the package (a symlink to ansible/roles/spyoncino in a checkout)
ROLE = Path(__file__).resolve().parent / "data" / "role"


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


def variables(
    overrides: list[str] | None = None, files: list[Path] | None = None, role: Path = ROLE
) -> dict[str, Any]:
    """The role's defaults, then each YAML file, then ``NAME=VALUE`` overrides (YAML values)."""
    data: dict[str, Any] = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    for f in files or []:
        data.update(yaml.safe_load(f.read_text()) or {})
    for item in overrides or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        data[name] = yaml.safe_load(raw) if raw else ""
    return data


def render(template: str, data: dict[str, Any], role: Path = ROLE) -> str:
    """One template of the role, rendered as Ansible's template module would."""
    # systemd units and YAML, not HTML: escaping would corrupt them
    env = jinja2.Environment(  # noqa: S701
        loader=jinja2.FileSystemLoader(str(role / "templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,  # what Ansible's template module does
    )
    env.filters.update(bool=_bool, to_nice_yaml=_to_nice_yaml, combine=_combine)
    data = {"ansible_managed": f"Rendered from the spyoncino role's {template}", **data}
    return env.get_template(template).render(**data)
