"""``spyoncino run``: the service (and a finite run over files, with its summary)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from importlib import import_module
from typing import Any

from spyoncino.cli._common import EXIT_CONFIG, load, print_config_errors
from spyoncino.core.config import AppConfig, ConfigError, secret_values
from spyoncino.core.logging import add_secrets, setup_logging
from spyoncino.core.orchestrator import Orchestrator, RunSummary


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
        registry, service = load(args, saved_changes=True)
    except ConfigError as e:
        print_config_errors(e)
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
        print_config_errors(e)
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
