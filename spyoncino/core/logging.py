"""structlog setup: JSON lines for journald, readable console on a terminal, secrets scrubbed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from spyoncino.core.config import REDACTED, redact_text

_secrets: list[str] = []


def add_secrets(values: Iterable[str]) -> None:
    """Register values that must never reach a log line (tokens, passwords)."""
    for v in values:
        if v and len(v) >= 4 and v not in _secrets:
            _secrets.append(v)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value, _secrets)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key in {"token", "password", "secret"}:
            event[key] = REDACTED
        else:
            event[key] = _scrub(value)
    return event


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """One rendering for every line: ours (structlog) and the libraries' (stdlib logging).

    aiogram, aiohttp and asyncio log through stdlib ``logging``; their records go through
    structlog's ``ProcessorFormatter`` with the same chain as ours, so they are JSON under
    systemd and pass the same secret scrubbing (a Bot API URL in an aiogram warning carries
    the token). Tracebacks are rendered into the ``exception`` field before scrubbing.
    """
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=False),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_processor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # libraries: warnings and worse only, unless debugging
    root.setLevel(max(numeric, logging.WARNING))
    for noisy in ("aiogram.event", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
