"""Setting a box up: ``spyoncino setup`` (the wizard), ``hash-password``, ``install-unit``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from spyoncino.cli._common import EXIT_CONFIG, optional


def cmd_hash_password(args: argparse.Namespace) -> int:
    fn = optional("spyoncino.modules.dashboard.status_page", "hash_password")
    if fn is None:
        print("the status page module is not installed", file=sys.stderr)
        return 1
    import getpass

    try:
        if args.password:
            password = args.password
        elif sys.stdin.isatty():
            password = getpass.getpass("password: ")
            if password and getpass.getpass("again: ") != password:
                print("the two passwords differ; nothing was hashed", file=sys.stderr)
                return EXIT_CONFIG
        else:  # piped: keeps the password out of `ps` and shell history
            password = sys.stdin.readline().rstrip("\n")
    except (KeyboardInterrupt, EOFError):
        print("\ncancelled", file=sys.stderr)
        return 130
    if not password:
        print("empty password", file=sys.stderr)
        return EXIT_CONFIG
    print(fn(password))
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from spyoncino.wizard import main as wizard

    return wizard(args)


def cmd_install_unit(args: argparse.Namespace) -> int:
    """Render the role's unit (and a first config) for a board installed by hand with pip."""
    from spyoncino import role_templates

    venv = Path(args.venv or sys.prefix).resolve()
    try:
        data = role_templates.variables(
            [f"spyoncino_venv={venv}", *args.set], [Path(f) for f in args.vars]
        )
        unit = role_templates.render("spyoncino.service.j2", data)
        config = role_templates.render("config.yaml.j2", data)
    except (ValueError, OSError) as e:
        print(f"install-unit: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print:
        sys.stdout.write(unit)
        return 0
    service = str(data["spyoncino_service_name"])
    unit_path = Path(args.unit_dir) / f"{service}.service"
    config_path = Path(args.config_dir) / "config.yaml"
    try:
        _write_new(unit_path, unit, mode=0o644, replace=True)
        wrote_config = _write_new(config_path, config, mode=0o640, replace=False)
    except PermissionError as e:
        print(f"install-unit: cannot write {e.filename}: run it as root (sudo)", file=sys.stderr)
        return 1
    print(f"wrote {unit_path} (ExecStart {venv}/bin/spyoncino)")
    print(f"wrote {config_path}" if wrote_config else f"kept {config_path} (it exists already)")
    user, group = data["spyoncino_user"], data["spyoncino_group"]
    print("next, as root:")
    print(f"  useradd --system --user-group --groups video --shell /usr/sbin/nologin {user}")
    print(f"  chgrp {group} {config_path} && systemctl daemon-reload")
    print(f"  systemctl enable --now {service}")
    return 0


def _write_new(path: Path, text: str, *, mode: int, replace: bool) -> bool:
    """Write ``path`` atomically (temp + fsync + rename); keep an existing one unless told."""
    if path.exists() and not replace:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.chmod(mode)
    os.replace(tmp, path)
    return True
