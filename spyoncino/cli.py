"""``spyoncino`` command line: run | check-config | schema | doctor | models | storage | update |
selftest."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from spyoncino import __version__
from spyoncino.core.config import (
    AppConfig,
    ConfigError,
    ConfigService,
    build_app_model,
    dump_config,
    secret_values,
)
from spyoncino.core.contracts import BaseModule
from spyoncino.core.logging import add_secrets, setup_logging
from spyoncino.core.orchestrator import Orchestrator, RunSummary, discover, plan

EXIT_CONFIG = 2


def _load(
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


def _print_config_errors(e: ConfigError) -> None:
    print(f"configuration has {len(e.errors)} error(s):", file=sys.stderr)
    for err in e.errors:
        print(f"  - {err}", file=sys.stderr)


def preflight(registry: dict[str, type[BaseModule]], app: AppConfig) -> list[str]:
    """Everything the planned modules can tell is wrong before a run (missing files, ...)."""
    problems: list[str] = []
    for _instance, cls, camera_id in plan(registry, app):
        problems.extend(p for p in cls.preflight(app, camera_id) if p not in problems)
    return problems


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
        registry, service = _load(args, saved_changes=True)
        problems = preflight(registry, service.current)
        if problems:
            raise ConfigError(problems)
    except ConfigError as e:
        _print_config_errors(e)
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


def format_summary(
    summary: RunSummary,
    app: AppConfig,
    elapsed_s: float,
    failed_cameras: dict[str, str] | None = None,
) -> str:
    root = app.storage.root.resolve()
    failed = failed_cameras or {}
    ran = [cid for cid, cam in app.cameras.items() if cam.enabled and cid not in failed]
    events = sum(n for k, n in summary.events.items() if k.endswith(".started"))
    sent = sum(n for k, n in summary.notifications.items() if k.endswith(".sent"))
    failed_sends = sum(n for k, n in summary.notifications.items() if k.endswith(".failed"))
    lines = [
        "",
        "Spyoncino run finished",
        f"  ran for        {elapsed_s:.1f} s on {len(ran)} camera(s)"
        + (f": {', '.join(ran)}" if ran else "")
        + (f" ({len(failed)} did not start)" if failed else ""),
        *[f"  not running    {cid}: {why}" for cid, why in sorted(failed.items())],
        f"  events         {events}"
        + (
            " (" + ", ".join(f"{k} {n}" for k, n in sorted(summary.events.items())) + ")"
            if summary.events
            else ""
        ),
        "  media          "
        + (", ".join(f"{n} {k}" for k, n in sorted(summary.artifacts.items())) or "none"),
        f"  alerts         {sent} sent, {failed_sends} failed"
        + ("" if summary.notifications else " (no alert channel configured)"),
        f"  files          {root}",
        f"  event index    {app.storage.db_path.resolve()}",
    ]
    if summary.artifact_paths:
        lines.append(f"  first snapshot {summary.artifact_paths[0]}")
    page = getattr(app, "status_page", None)
    if page is not None and getattr(page, "enabled", False):
        host, _, port = str(page.listen).rpartition(":")
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "[::]") else host
        lines.append(
            f"  status page    http://{shown}:{port}/ while running "
            f"(password: {root / 'status_page.password'} unless status_page.password_hash is set)"
        )
    lines.append("")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        registry, service = _load(args, saved_changes=True)
    except ConfigError as e:
        _print_config_errors(e)
        return EXIT_CONFIG
    app = service.current
    setup_logging(app.log.level, app.log.format)
    if service.overlay_error:
        import structlog

        structlog.get_logger("spyoncino").warning(
            "config_overlay_ignored", reason=service.overlay_error
        )
    add_secrets(secret_values(app))
    orch = Orchestrator(service, registry)

    async def main() -> int:
        notifier = _systemd_notifier(orch)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if notifier is not None:
            orch.on_started.append(notifier.start)
            orch.on_stopping.append(notifier.stop)
        code = await orch.run(exit_when_inputs_end=not args.forever)
        failed = {
            s.camera_id: s.last_error or s.state
            for s in orch.slots
            if s.camera_id is not None and s.state == "quarantined"
        }
        print(format_summary(orch.summary, service.current, loop.time() - t0, failed), flush=True)
        if orch.stuck:
            # interpreter exit would join the wedged thread forever
            sys.stderr.flush()
            os._exit(code or 1)
        return code

    try:
        return asyncio.run(main())
    except ConfigError as e:
        _print_config_errors(e)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _systemd_notifier(orch: Orchestrator) -> Any:
    """The sd_notify bridge when running under systemd (NOTIFY_SOCKET set), else None."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    try:
        mod = import_module("spyoncino.core.systemd")
    except ImportError:
        return None
    return mod.SystemdNotifier(orch)


def _optional(module: str, func: str) -> Callable[..., list[str]] | None:
    try:
        fn = getattr(import_module(module), func)
    except (ImportError, AttributeError):
        return None
    return fn  # type: ignore[no-any-return]


def cmd_doctor(args: argparse.Namespace) -> int:
    print(f"spyoncino {__version__} on Python {sys.version.split()[0]}")
    registry = discover()
    print("modules: " + ", ".join(sorted(registry)))
    try:
        _r, service = _load(args)
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
        _r, service = _load(args)
    except ConfigError as e:
        _print_config_errors(e)
        return EXIT_CONFIG
    fn = _optional("spyoncino.modules.process.detector", "describe_models")
    if fn is None:
        print("no detector module is installed")
        return 1
    for line in fn(service.current):
        print(line)
    return 0


def cmd_storage(args: argparse.Namespace) -> int:
    try:
        _r, service = _load(args)
    except ConfigError as e:
        _print_config_errors(e)
        return EXIT_CONFIG
    storage = service.current.storage
    reindex = getattr(import_module("spyoncino.modules.storage.index.reindex"), "reindex", None)
    if reindex is None:  # pragma: no cover - shipped with the package
        print("reindex is not available", file=sys.stderr)
        return 1
    n = reindex(storage.root, storage.db_path)
    print(f"reindexed {storage.root}: {n} missing row(s) restored into {storage.db_path}")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    fn = _optional("spyoncino.modules.dashboard.status_page", "hash_password")
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


def cmd_selftest(args: argparse.Namespace) -> int:
    from spyoncino import selftest

    return selftest.run(
        Path(args.config) if args.config else None, Path(args.secrets) if args.secrets else None
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spyoncino", description=__doc__)
    parser.add_argument("--version", action="version", version=f"spyoncino {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            "-c",
            help="config file (default: /etc/spyoncino/config.yaml or the embedded demo)",
        )
        p.add_argument("--secrets", help="secrets file (tokens, passwords)")
        return p

    p = with_config(sub.add_parser("run", help="run the pipeline"))
    p.add_argument("--forever", action="store_true", help="keep running after file sources end")
    p.set_defaults(func=cmd_run)
    p = with_config(
        sub.add_parser("check-config", help="validate the configuration, exit 2 on errors")
    )
    p.add_argument("--show", action="store_true", help="print the merged config, secrets as ***")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("schema", help="write JSON Schemas of the config file and every payload")
    p.add_argument("--out", default="schema", help="output folder (default ./schema)")
    p.set_defaults(func=cmd_schema)
    p = with_config(
        sub.add_parser("doctor", help="what this box can see: profile, cameras, config")
    )
    p.set_defaults(func=cmd_doctor)
    p = with_config(sub.add_parser("models", help="list bundled and configured detection models"))
    p.set_defaults(func=cmd_models)
    p = with_config(sub.add_parser("storage", help="storage maintenance"))
    p.add_argument(
        "action", choices=["reindex"], help="reindex: rebuild the index from the media folder"
    )
    p.set_defaults(func=cmd_storage)
    p = sub.add_parser("hash-password", help="hash a status page password for the config")
    p.add_argument("password", nargs="?", help="the password (else prompted, or read from a pipe)")
    p.set_defaults(func=cmd_hash_password)
    p = sub.add_parser("setup", help="add a camera and Telegram alerts by answering questions")
    p.add_argument(
        "--config", "-c", default="/etc/spyoncino/config.yaml", help="config file to write"
    )
    p.add_argument("--secrets", help="secrets file (default: secrets.yaml beside the config)")
    p.add_argument("--frame", help="where the test frame goes (default: beside the config)")
    p.add_argument("--telegram-api-url", default="https://api.telegram.org", help="Bot API server")
    p.set_defaults(func=cmd_setup)
    p = sub.add_parser(
        "install-unit",
        help="write the systemd unit and a first config for a board installed with pip",
    )
    p.add_argument("--venv", help="virtualenv the unit runs (default: this one)")
    p.add_argument("--unit-dir", default="/etc/systemd/system", help="where the unit goes")
    p.add_argument("--config-dir", default="/etc/spyoncino", help="where config.yaml goes")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a role variable"
    )
    p.add_argument(
        "--vars", action="append", default=[], metavar="FILE", help="YAML file of role variables"
    )
    p.add_argument("--print", action="store_true", help="print the unit, write nothing")
    p.set_defaults(func=cmd_install_unit)
    p = sub.add_parser(
        "update", help="over-the-air update: A/B slots, health gate, rollback (docs/updates.md)"
    )
    p.add_argument(
        "action",
        nargs="?",
        default="update",
        choices=["update", "status", "rollback"],
        help="update (default), status, or rollback to the other good slot",
    )
    p.add_argument("--version", dest="version", help="exact version (default: the newest)")
    p.add_argument("--index-url", help="PEP 503 index (default: the box's settings)")
    p.add_argument("--wheel", help="install this wheel file instead (offline)")
    p.add_argument("--find-links", action="append", default=[], metavar="DIR")
    p.add_argument("--check", action="store_true", help="only say whether a newer one exists")
    p.add_argument("--force", action="store_true", help="retry a version marked bad")
    p.add_argument("--pre", action="store_true", help="consider pre-releases")
    p.set_defaults(func=cmd_update)
    p = with_config(
        sub.add_parser("selftest", help="imports, detector inference, storage: can this run?")
    )
    p.set_defaults(func=cmd_selftest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
