"""Start-up with Telegram configured: launch -> first frame (CPU and wall), RSS after start.

``spyoncino run`` as a box runs it (every registered module, the status page on a free
loopback port), one file camera replaying the footage in real time, Telegram pointed at the
local Bot API emulator (tests/support/botapi.py). Variants, rounds interleaved:

* ``no_telegram``: no token (the Telegram module stays inert, aiogram is never imported);
* ``telegram``: token and chat: aiogram imported in a worker, models built on first use
  (``spyoncino/modules/output/_aiogram.py``);
* ``telegram_eager``: the same with ``_aiogram.EAGER`` set (through a ``sitecustomize`` on
  ``PYTHONPATH``): aiogram imported the plain way, every model built at import -- the
  figure before #20.

Measured per run: user + system CPU of the process (all threads, ``/proc/<pid>/stat``) and
wall time from launch to the ``camera_streaming`` log line (the first frame published), and
to ``telegram_started``; ``VmRSS`` 8 s after the first frame. Plus, in fresh interpreters,
``import aiogram`` alone both ways (CPU and RSS it adds over pydantic + aiohttp).

Targets (issue #20): launch -> first frame <= 1.5 s CPU; RSS after start <= 250 MB with one
camera and Telegram. The machine is shared (2 cores, other jobs): medians and spread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import REPO, SAMPLE, rss_mb, service_env, write_result
from bench_idle import proc_cpu

from tests.support.botapi import BotApiEmulator

CHAT = 4242
IMPORT_PROBE = r"""
import json, os, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def cpu():
    t = os.times()
    return t.user + t.system
import pydantic, aiohttp
r0, c0 = rss(), cpu()
from spyoncino.modules.output import _aiogram
r1, c1 = rss(), cpu()
_aiogram.EAGER = sys.argv[1] == "eager"
_aiogram.load()
from aiogram.types import Message
from aiogram.methods import SendPhoto
r2, c2 = rss(), cpu()
Message.model_validate(
    {"message_id": 1, "date": 1700000000, "chat": {"id": 1, "type": "private"}, "text": "hi"}
)
SendPhoto(chat_id=1, photo="x").model_dump(exclude_none=True)
r3, c3 = rss(), cpu()
print(json.dumps({"import_cpu_s": round(c2 - c1, 3), "import_rss_mb": round(r2 - r1, 1),
                  "first_use_cpu_s": round(c3 - c2, 3), "first_use_rss_mb": round(r3 - r2, 1)}))
"""


def import_probe(mode: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, mode], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def write_config(tmp: Path, telegram: BotApiEmulator | None) -> Path:
    config: dict[str, Any] = {
        "cameras": {"cam": {"source": str(SAMPLE), "file": {"pace": "realtime", "loop": True}}},
        "storage": {"root": str(tmp / "root")},
        "log": {"format": "json", "level": "info"},
        "status_page": {"listen": "127.0.0.1:0", "mdns": False},
    }
    if telegram is not None:
        config["telegram"] = {
            "token": "123456:BENCH-token",
            "chat_ids": [CHAT],
            "api_base_url": telegram.base_url,
        }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def launch(kind: str, emu: BotApiEmulator) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg = write_config(tmp, None if kind == "no_telegram" else emu)
        env = service_env()
        if kind == "telegram_eager":
            site = tmp / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(
                "from spyoncino.modules.output import _aiogram\n_aiogram.EAGER = True\n"
            )
            env["PYTHONPATH"] = f"{site}:{REPO}"
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "spyoncino",
            "run",
            "--config",
            str(cfg),
            "--forever",
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        marks: dict[str, tuple[float, float]] = {}
        want = {"camera_streaming"} | ({"telegram_started"} if kind != "no_telegram" else set())
        try:
            async with asyncio.timeout(120):
                while not want <= marks.keys():
                    line = await proc.stdout.readline()
                    if not line:
                        raise SystemExit(f"{kind}: spyoncino run exited")
                    for event in want - marks.keys():
                        if f'"{event}"' in line.decode(errors="replace"):
                            marks[event] = (time.monotonic() - t0, proc_cpu(proc.pid))
            drain = asyncio.create_task(proc.stdout.read())  # keep the pipe from filling
            await asyncio.sleep(8.0)
            rss = rss_mb(proc.pid) or 0.0
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()
        drain.cancel()
        first_wall, first_cpu = marks["camera_streaming"]
        out = {
            "first_frame_wall_s": round(first_wall, 2),
            "first_frame_cpu_s": round(first_cpu, 2),
            "rss_after_start_mb": round(rss, 1),
        }
        if "telegram_started" in marks:
            out["telegram_started_wall_s"] = round(marks["telegram_started"][0], 2)
            out["telegram_started_cpu_s"] = round(marks["telegram_started"][1], 2)
        return out


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        vals = [r[key] for r in runs]
        out[key] = {"median": round(statistics.median(vals), 2), "runs": vals}
    return out


async def main_async(rounds: int) -> dict[str, Any]:
    emu = BotApiEmulator()
    await emu.start()
    kinds = ["no_telegram", "telegram", "telegram_eager"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    probes: dict[str, list[dict[str, Any]]] = {"lazy": [], "eager": []}
    try:
        for _ in range(rounds):
            for kind in kinds:
                runs[kind].append(await launch(kind, emu))
            for mode in probes:
                probes[mode].append(import_probe(mode))
    finally:
        await emu.stop()
    return {
        "runs": {k: summary(v) for k, v in runs.items()},
        "import_aiogram": {k: summary(v) for k, v in probes.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    res = asyncio.run(main_async(args.rounds))
    tg = res["runs"]["telegram"]
    write_result(
        "startup",
        {
            "camera": f"{SAMPLE.name} replayed in real time (file input)",
            "rounds": args.rounds,
            "note": "CPU: user+system of the whole process from launch; wall for reference. "
            "The machine was shared with other heavy jobs (2 cores): medians and all runs. "
            "telegram_eager: aiogram's models all built at import, as before #20.",
            **res,
            "targets": {
                "first_frame_cpu_le_1_5_s": tg["first_frame_cpu_s"]["median"] <= 1.5,
                "rss_after_start_le_250_mb": tg["rss_after_start_mb"]["median"] <= 250,
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
