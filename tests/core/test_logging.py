"""Library log lines (aiogram, aiohttp, asyncio via stdlib logging) get our rendering and scrub."""

from __future__ import annotations

import io
import json
import logging

import structlog

from spyoncino.core.logging import add_secrets, setup_logging

TOKEN = "987654:LIBRARY-LEAKED-TOKEN"


def test_a_stdlib_logger_line_is_json_and_has_no_secret() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    add_secrets([TOKEN])
    logging.getLogger("aiogram.dispatcher").warning(
        "Failed to fetch updates - TelegramNetworkError: https://api.telegram.org/bot%s/getUpdates",
        TOKEN,
    )
    logging.getLogger("aiohttp.client").error("connect to rtsp://admin:hunter22@10.0.0.5/s failed")
    lines = out.getvalue().splitlines()
    assert TOKEN not in out.getvalue()
    assert "hunter22" not in out.getvalue()
    records = [json.loads(line) for line in lines]  # every line is a JSON object
    assert records[0]["logger"] == "aiogram.dispatcher"
    assert records[0]["level"] == "warning"
    assert "bot***/getUpdates" in records[0]["event"]
    assert records[1]["event"] == "connect to rtsp://***@10.0.0.5/s failed"


def test_a_stdlib_traceback_is_scrubbed_too() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    add_secrets([TOKEN])
    try:
        raise RuntimeError(f"bad response from /bot{TOKEN}/sendPhoto")
    except RuntimeError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    (record,) = (json.loads(line) for line in out.getvalue().splitlines())
    assert TOKEN not in out.getvalue()
    assert "RuntimeError" in record["exception"]


def test_our_own_lines_still_render_as_before() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    structlog.get_logger("spyoncino").info("camera_started", camera="yard")
    (record,) = (json.loads(line) for line in out.getvalue().splitlines())
    assert record["event"] == "camera_started"
    assert record["camera"] == "yard"
    assert record["level"] == "info"
