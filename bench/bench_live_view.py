"""Live view cost: server CPU while one phone watches a camera's live view with its boxes.

``spyoncino run`` replays the footage (looping, realtime) with motion on and the detector off
(the boxes drawn are motion's; the detector's would come the same way), like
``bench_status_page.py``. The server's CPU time is read over a quiet window (nobody looks)
and over a window in which one logged-in client reads the MJPEG stream of the live page
(``live_fps`` frames a second, each encoded once, whoever watches) and keeps the SSE
connection the page opens, which carries the boxes (at most 5 a second per camera and kind).
The difference is what the live view costs. Target: <= 10 % of a core at the default 2 fps.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footage, write_result
from bench_status_page import cpu_seconds, login, serving

WINDOW_S = 20.0
KEEP = {"file", "status_page", "arming", "motion"}
TARGET_PERCENT = 10.0


async def viewer(base: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, base)

        async def sse() -> None:
            async with http.get(base + "/api/stream") as r:
                async for line in r.content:
                    if line.startswith(b"event: boxes"):
                        counts["boxes"] += 1
                    if stop.is_set():
                        return

        async def mjpeg() -> None:
            async with http.get(base + "/cameras/bench/stream.mjpeg") as r:
                async for chunk in r.content.iter_any():
                    counts["frames"] += chunk.count(b"Content-Type: image/jpeg")
                    counts["bytes"] += len(chunk)
                    if stop.is_set():
                        return

        tasks = [asyncio.create_task(sse()), asyncio.create_task(mjpeg())]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def measure(base: str, pid: int, live_fps: float) -> dict[str, object]:
    await asyncio.sleep(3.0)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(WINDOW_S)
    idle = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    stop = asyncio.Event()
    counts = {"frames": 0, "boxes": 0, "bytes": 0}
    task = asyncio.create_task(viewer(base, stop, counts))
    await asyncio.sleep(3.0)  # login (scrypt) out of the window
    counts.update(frames=0, boxes=0, bytes=0)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(WINDOW_S)
    elapsed = time.monotonic() - t1
    busy = (cpu_seconds(pid) - c1) / elapsed
    seen = dict(counts)
    stop.set()
    await asyncio.gather(task, return_exceptions=True)
    cost = max(0.0, busy - idle) * 100.0
    return {
        "window_s": WINDOW_S,
        "live_fps": live_fps,
        "server_cpu_idle_percent_of_core": round(idle * 100.0, 2),
        "server_cpu_with_live_view_percent_of_core": round(busy * 100.0, 2),
        "live_view_cpu_percent_of_core": round(cost, 2),
        "frames_per_s": round(seen["frames"] / elapsed, 2),
        "boxes_per_s": round(seen["boxes"] / elapsed, 2),
        "kbytes_per_s": round(seen["bytes"] / elapsed / 1024.0, 1),
        "target_cpu_percent_of_core": TARGET_PERCENT,
        "meets_target": cost <= TARGET_PERCENT and seen["frames"] > 0,
    }


def run(live_fps: float) -> dict[str, object]:
    with serving(KEEP, live_fps=live_fps) as (base, pid):
        return asyncio.run(measure(base, pid, live_fps))


def main() -> None:
    runs = {f"{fps:g}_fps": run(fps) for fps in (2.0, 5.0)}
    result: dict[str, object] = {
        "runs": runs,
        "meets_target": bool(runs["2_fps"]["meets_target"]),
        "footage": footage().name,
    }
    write_result("live_view", result)


if __name__ == "__main__":
    main()
