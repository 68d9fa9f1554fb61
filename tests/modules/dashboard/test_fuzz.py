"""A property-based fuzz of the status page's HTTP API: whatever arrives, never a 500.

Hypothesis draws methods, routes (real ones with hostile segments), query values, headers
(bad Authorization, content types without their parameters) and bodies (bytes, forms, JSON
nested deep) and sends them to one running page over loopback. A 5xx, or a traceback from
aiohttp's request handler in the log, fails the test. The examples are derandomised, so CI
runs the same requests every time.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import TOKEN, Running

ROUTES = [
    "/",
    "/login",
    "/logout",
    "/events",
    "/events/{seg}",
    "/cameras/{seg}",
    "/cameras/{seg}/latest.jpg",
    "/health",
    "/health/live",
    "/health/ready",
    "/config",
    "/metrics",
    "/media/{seg}",
    "/static/{seg}",
    "/api/status",
    "/api/events",
    "/api/events/{seg}",
    "/api/arm",
    "/api/disarm",
    "/api/mute",
    "/api/unmute",
    "/api/cameras/{seg}/snapshot",
    "/api/config",
    # the home user's pages (the first-run probe and camera calls open sources: not fuzzed)
    "/cameras/{seg}/zones",
    "/cameras/{seg}/timeline",
    "/setup",
    "/setup/frame.jpg",
    "/api/cameras/{seg}/zones",
    "/settings/telegram",
]
NASTY = ["..", "%2e%2e", "%00", "cam", "x" * 300, "%ff%fe", "a/b", "🙂", "\\", "-1", "1e308"]
QUERY_KEYS = ["day", "before", "limit", "camera", "label", "next"]
QUERY_VALUES = [
    "9999-12-31",
    "0001-01-01",
    "2026-02-30",
    "nan",
    "inf",
    "-1",
    "1e400",
    "",
    "x" * 500,
]
CONTENT_TYPES = [
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "application/x-www-form-urlencoded",
    "application/json",
    "application/json; charset=nope",
    "text/plain",
]
AUTHS = [None, None, f"Bearer {TOKEN}", "Bearer wrong", "Basic Zm9vOmJhcg==", "Bearer", "\t"]


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    route = draw(st.sampled_from(ROUTES))
    seg = draw(st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=20)))
    path = route.replace("{seg}", seg)
    query = draw(
        st.dictionaries(
            st.sampled_from(QUERY_KEYS),
            st.one_of(st.sampled_from(QUERY_VALUES), st.text(max_size=30)),
            max_size=3,
        )
    )
    body = draw(
        st.one_of(
            st.none(),
            st.binary(max_size=200),
            st.sampled_from([nested(5000), nested(100_000), b'{"a":' * 3000, b"\xff\xfe"]),
            st.builds(
                lambda d: json.dumps(d).encode(),
                st.recursive(
                    st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=10)),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c),
                    max_leaves=20,
                ),
            ),
        )
    )
    return {
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"])),
        "path": path,
        "query": query,
        "body": body,
        "content_type": draw(st.sampled_from(CONTENT_TYPES)),
        "auth": draw(st.sampled_from(AUTHS)),
    }


class Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def tracebacks() -> Any:
    handler = Tracebacks()
    logger = logging.getLogger("aiohttp.server")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


_RUNNING: dict[int, Running] = {}


@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(req=requests())
async def test_no_request_makes_the_page_fail(
    start_page: Any, tracebacks: Tracebacks, req: dict[str, Any]
) -> None:
    key = id(start_page)
    if key not in _RUNNING:  # one page for all the examples of this run
        _RUNNING.clear()
        _RUNNING[key] = await start_page()
    r = _RUNNING[key]
    headers = {"Content-Type": req["content_type"]}
    if req["auth"] is not None:
        headers["Authorization"] = req["auth"]
    try:
        async with r.http.request(
            req["method"],
            r.url(req["path"]),
            params=req["query"],
            data=req["body"],
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            await resp.read()
            status = resp.status
    except (aiohttp.InvalidURL, ValueError):
        return  # the client refused to send it: nothing reached the page
    assert status < 500, (status, req)
    assert not tracebacks.records, [rec.getMessage() for rec in tracebacks.records]
