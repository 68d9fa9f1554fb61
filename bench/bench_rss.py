"""Resident memory of ``spyoncino run`` with 1, 2 and 4 cameras over time.

Each run is the service as a box runs it: ``spyoncino run --forever`` in its own process with
every registered module (motion, the bundled person model, tracker, snapshot/GIF/clip
writers, index, retention, arming, status page, Telegram into the local Bot API emulator on
127.0.0.1), N file cameras replaying real footage scaled to 1280x720 at 10 fps, looping, in
real time, so people walk through and events, GIFs, clips and alerts happen all along.

RSS is the process's ``VmRSS`` (``/proc/<pid>/status``), sampled every second. Reported per
camera count: at start (30 s after launch: imports, the model and the first frames done),
peak, steady (median of the last minute), end, growth over the last 5 minutes (the issue's
target; runs of 7 minutes or more) and, for reference, from minute 2 to the end (the first
two minutes are start-up, the model's first runs and the first events filling their
buffers). At the end ``/proc/<pid>/smaps`` is summed by what each mapping is (a shared
library by file, the heap and anonymous memory), which says where the memory goes; Python's
own allocations and numpy/OpenCV/FFmpeg buffers are inside ``[heap]`` and ``[anon]``.

Targets from issue 17 on this machine: 1 camera <= 250 MB, 4 cameras <= 450 MB, growth <= 2 %;
reported as pass/fail in the JSON, never asserted.

Run: ``python bench/bench_rss.py [--duration 600] [--cameras 1,2,4]`` ->
``bench/results/rss.json``. ``make bench`` runs the default 10 minutes per camera count (30
minutes in all); a shorter ``--duration`` is for a quick look and is written into the result.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import REPO, footage, rss_mb, service_env, write_result

from tests.support.botapi import BotApiEmulator

TARGET_MB = {1: 250.0, 4: 450.0}
TARGET_GROWTH_PCT = 2.0
#: "start" is the RSS this long after launch: imports, the model and the first frames done
START_S = 30.0
CACHE = REPO / ".cache" / "bench"
CHAT = 4242


def footage_720p() -> Path:
    """The footage scaled to 1280x720 at 10 fps (made once, kept in .cache/)."""
    import av

    src = footage()
    out = CACHE / f"{src.stem}-1280x720-10fps.mp4"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part.mp4")
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as dst:
        stream: Any = dst.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "26", "g": "20"}
        for i, frame in enumerate(inp.decode(video=0)):
            f = frame.reformat(width=1280, height=720, format="yuv420p")
            f.pts, f.time_base = i, Fraction(1, 10)
            for p in stream.encode(f):
                dst.mux(p)
        for p in stream.encode(None):
            dst.mux(p)
    tmp.replace(out)
    return out


def smaps_by_mapping(pid: int, top: int = 15) -> dict[str, float]:
    """RSS in MB by mapping: shared objects by file name, [heap], [anon], [stack]..."""
    sums: collections.Counter[str] = collections.Counter()
    name = "[anon]"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        head = line.split(None, 5)
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            path = head[5].strip() if len(head) > 5 else ""
            if not path:
                name = "[anon]"
            elif path.startswith("["):
                name = path
            else:
                base = Path(path).name
                # one bucket per library: libavcodec-1a2b.so.60 -> libavcodec
                name = re.sub(r"(-[0-9a-f]{8})?(\.cpython.*)?\.so.*$", "", base)
                if "site-packages" in path:
                    pkg = path.split("site-packages/", 1)[1].split("/", 1)[0]
                    name = f"{pkg}:{name}"
        elif line.startswith("Rss:"):
            sums[name] += int(line.split()[1])
    return {k: round(v / 1024, 1) for k, v in sums.most_common(top)}


def write_config(tmp: Path, cameras: int, source: Path, emu: BotApiEmulator) -> Path:
    config: dict[str, Any] = {
        "cameras": {
            f"cam{i}": {"source": str(source), "file": {"pace": "realtime", "loop": True}}
            for i in range(cameras)
        },
        "storage": {"root": str(tmp / "root")},
        "log": {"format": "json", "level": "warning"},
        "status_page": {"listen": "127.0.0.1:0", "mdns": False},
        "telegram": {
            "token": "123456:BENCH-token",
            "chat_ids": [CHAT],
            "api_base_url": emu.base_url,
            "outbox": {"min_interval_s": 0.0},
        },
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def measure(cameras: int, duration_s: float, source: Path) -> dict[str, Any]:
    emu = BotApiEmulator()
    await emu.start()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg = write_config(tmp, cameras, source, emu)
        env = service_env()
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
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        sends = 0
        try:
            while time.monotonic() - t0 < duration_s and proc.returncode is None:
                mb = rss_mb(proc.pid)
                if mb is not None:
                    samples.append((time.monotonic() - t0, mb))
                sends += sum(1 for c in emu.calls if c.method.startswith("send"))
                emu.calls.clear()  # the emulator keeps uploads; this process is not measured
                await asyncio.sleep(1.0)
            smaps = smaps_by_mapping(proc.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            await emu.stop()
    if not samples:
        raise RuntimeError(f"{cameras} camera(s): the service exited at once ({proc.returncode})")
    values = [mb for _, mb in samples]
    last_minute = [mb for t, mb in samples if t >= samples[-1][0] - 60] or values
    at_2min = [mb for t, mb in samples if 110 <= t <= 130]
    base = statistics.median(at_2min) if at_2min else None
    end = statistics.median(values[-10:])
    growth = round(100 * (end - base) / base, 2) if base else None
    # the measure: the last 5 minutes (from the median around 5 minutes before the end)
    t_end = samples[-1][0]
    at_last5 = [mb for t, mb in samples if t_end - 310 <= t <= t_end - 290] if t_end >= 420 else []
    base5 = statistics.median(at_last5) if at_last5 else None
    growth5 = round(100 * (end - base5) / base5, 2) if base5 else None
    result: dict[str, Any] = {
        "cameras": cameras,
        "measured_s": round(samples[-1][0], 1),
        "start_mb": round(next((mb for t, mb in samples if t >= START_S), values[-1]), 1),
        "peak_mb": round(max(values), 1),
        "steady_mb": round(statistics.median(last_minute), 1),
        "end_mb": round(end, 1),
        "growth_pct_min2_to_end": growth,
        "growth_pct_last_5min": growth5,
        "telegram_sends": sends,
        "exit_code": proc.returncode,
        "rss_by_mapping_mb": smaps,
        "timeline_mb": [round(mb, 1) for t, mb in samples if int(t) % 30 == 0],
    }
    target = TARGET_MB.get(cameras)
    if target is not None:
        result["target_mb"] = target
        result["meets_target_mb"] = result["peak_mb"] <= target
    if growth5 is not None:
        result["meets_target_growth"] = growth5 <= TARGET_GROWTH_PCT
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds per camera count")
    ap.add_argument("--cameras", default="1,2,4", help="camera counts, comma-separated")
    args = ap.parse_args()
    source = footage_720p()
    runs = [asyncio.run(measure(int(n), args.duration, source)) for n in args.cameras.split(",")]
    note = (
        "growth_pct_last_5min (the target) is from the median 5 minutes before the end to the "
        "median of the last 10 s; growth_pct_min2_to_end from the median around minute 2"
        if args.duration >= 180
        else "run shorter than 3 minutes: no minute-2 baseline, growth not measured"
    )
    write_result(
        "rss",
        {
            "footage": source.name,
            "duration_s_per_run": args.duration,
            "default_duration_s": 600.0,
            "targets": {"mb": TARGET_MB, "growth_pct": TARGET_GROWTH_PCT},
            "note": note,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
