#!/usr/bin/env python3
"""Render a template of the spyoncino role without running Ansible (for the image builder).

The role's defaults are the variables; ``--set name=value`` (YAML value) and ``--vars FILE``
override them, the way inventory variables do. The rendering itself lives in the package
(``spyoncino/role_templates.py``, what ``spyoncino install-unit`` uses); this script loads
that one file from the checkout, so it needs only jinja2 and PyYAML. Example, a unit for a
Pi 4 image:

    python3 ansible/render_template.py spyoncino.service.j2 --set spyoncino_memory_max=50% \
        > rootfs/etc/systemd/system/spyoncino.service
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "spyoncino_role_templates", HERE.parent / "spyoncino" / "role_templates.py"
)
assert _spec is not None
assert _spec.loader is not None
templates = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(templates)
ROLE = HERE / "roles" / "spyoncino"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", help="file name under roles/spyoncino/templates")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--vars", action="append", default=[], type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    data = templates.variables(args.set, args.vars, role=ROLE)
    sys.stdout.write(templates.render(args.template, data, role=ROLE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
