"""Status page cost: server CPU with 5 clients polling the overview, and overview latency.

``spyoncino run`` serves the page while replaying the footage (looping, realtime) with the
processing modules switched off, so what is measured is the page and not the detector. The
server's CPU time (utime+stime from /proc) is read over a quiet window and over a window in
which 5 logged-in clients each keep a live-update (SSE) connection open, fetch the overview
HTML every second and the camera card snapshot every 3 s (the page's default refresh). The
difference is the status page's cost. Targets: <= 2 % of a core; overview p95 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footage, write_result

from spyoncino.core.orchestrator import discover
from spyoncino.modules.dashboard.status_page import hash_password

CLIENTS = 5
WINDOW_S = 30.0
OVERVIEW_EVERY_S = 1.0
SNAPSHOT_EVERY_S = 3.0
PASSWORD = "bench password"
KEEP = {"file", "status_page", "arming", "index"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def login(http: aiohttp.ClientSession, base: str) -> None:
    """Log ``http`` in through the form, as a browser does (CSRF token, then the password)."""
    async with http.get(base + "/login") as r:
        token = re.search(r'name="csrf_token" value="([^"]+)"', await r.text())
    assert token is not None
    async with http.post(
        base + "/login",
        data={"csrf_token": token.group(1), "password": PASSWORD},
        allow_redirects=False,
    ) as r:
        assert r.status == 303, r.status


async def client(base: str, stop: asyncio.Event, latencies: list[float], errors: list[str]) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, base)

        async def sse() -> None:
            async with http.get(base + "/api/stream") as r:
                async for _ in r.content:
                    if stop.is_set():
                        return

        stream = asyncio.create_task(sse())
        next_snap = 0.0
        while not stop.is_set():
            t0 = time.perf_counter()
            async with http.get(base + "/") as r:
                await r.read()
                if r.status != 200:
                    errors.append(f"overview {r.status}")
            latencies.append((time.perf_counter() - t0) * 1000.0)
            if time.monotonic() >= next_snap:
                next_snap = time.monotonic() + SNAPSHOT_EVERY_S
                async with http.get(base + "/cameras/bench/latest.jpg?w=640") as r:
                    await r.read()
                    if r.status != 200:
                        errors.append(f"snapshot {r.status}")
            await asyncio.sleep(max(0.0, OVERVIEW_EVERY_S - (time.perf_counter() - t0)))
        stream.cancel()


async def measure(base: str, pid: int) -> dict[str, object]:
    # quiet window: the page is up, the camera plays, nobody looks
    c0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(WINDOW_S)
    idle = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)

    stop = asyncio.Event()
    latencies: list[float] = []
    errors: list[str] = []
    tasks = [asyncio.create_task(client(base, stop, latencies, errors)) for _ in range(CLIENTS)]
    await asyncio.sleep(3.0)  # logins (scrypt) and first requests out of the window
    latencies.clear()
    c1, t1 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(WINDOW_S)
    busy = (cpu_seconds(pid) - c1) / (time.monotonic() - t1)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(latencies)
    p95 = lat[int(0.95 * (len(lat) - 1))]
    page_cpu = max(0.0, busy - idle) * 100.0
    return {
        "clients": CLIENTS,
        "window_s": WINDOW_S,
        "overview_every_s": OVERVIEW_EVERY_S,
        "snapshot_every_s": SNAPSHOT_EVERY_S,
        "server_cpu_idle_percent_of_core": round(idle * 100.0, 2),
        "server_cpu_with_clients_percent_of_core": round(busy * 100.0, 2),
        "status_page_cpu_percent_of_core": round(page_cpu, 2),
        "overview_requests": len(lat),
        "overview_ms_p50": round(statistics.median(lat), 2),
        "overview_ms_p95": round(p95, 2),
        "overview_ms_max": round(lat[-1], 2),
        "errors": errors[:10],
        "target_cpu_percent_of_core": 2.0,
        "target_overview_ms_p95": 50.0,
        "meets_target": page_cpu <= 2.0 and p95 <= 50.0 and not errors,
    }


@contextlib.contextmanager
def serving(keep: set[str], **status_page: object) -> Iterator[tuple[str, int]]:
    """``spyoncino run`` on the looping footage with only ``keep`` enabled, until ready:
    yields the page's base URL and the process id."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config: dict[str, object] = {
            "cameras": {
                "bench": {"source": str(footage()), "file": {"pace": "realtime", "loop": True}}
            },
            "storage": {"root": f"{tmp}/root"},
            "log": {"format": "json", "level": "warning"},
            "status_page": {
                "listen": f"127.0.0.1:{port}",
                "password_hash": hash_password(PASSWORD),
                "mdns": False,
                **status_page,
            },
        }
        for name in discover():
            if name not in keep:
                config[name] = {"enabled": False}
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        exe = Path(sys.executable).with_name("spyoncino")
        proc = subprocess.Popen(
            [str(exe), "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(base + "/health/ready", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("spyoncino run did not become ready")
                time.sleep(0.5)
            yield base, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def main() -> None:
    with serving(KEEP) as (base, pid):
        result = asyncio.run(measure(base, pid))
    result["footage"] = footage().name
    write_result("status_page", result)


if __name__ == "__main__":
    main()
