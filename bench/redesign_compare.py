"""The #16 before/after table: the quick bus and pipeline benchmarks on two checkouts.

Issue #16 asks that the benchmarks in ``make bench`` do not regress by more than their
run-to-run spread. This runs, on a checkout from before the redesign and one after it (each
with its own venv, ``DIR/.venv``, so each runs its own code and entry points), what
``bench_bus``, ``bench_motion`` and ``bench_pipeline`` measure, with the rounds interleaved
(before, after, before, after, ...) so a change in the machine's load hits both alike:

* ``bus_block_{1,4}_us_per_msg``: CPU microseconds per message delivered (``process_time``),
  ``block`` policy, 1 and 4 subscribers, 200k messages (``bench_bus.throughput``'s loop);
* ``bus_fast_lag_p95_ms_{alone,beside_slow}``: a fast subscriber's delivery lag, p95, alone and
  next to a slow ``block`` subscriber (``bench_bus.fast_lag_p95_ms``; wall time);
* ``motion_ms_per_frame_{1280x720,640x360}``: CPU ms per frame of the motion detector on
  300 frames of the real footage, one thread (``bench_motion.ours``, timed here with
  ``process_time`` since the older one timed wall);
* ``pipeline_cpu_s``: CPU seconds (user + system, every thread) of ``spyoncino run`` with the
  embedded defaults on the packaged sample clip replayed in real time (``bench_pipeline``).

Each measurement is a fresh process. The JSON keeps every round; the table shows medians and
the spread (max - min) of each side. Usage::

    python bench/redesign_compare.py --before /work/bench_before --after /work/bench_after \\
        --rounds 3 --out bench/results/redesign_before_after.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BUS = """
import asyncio, json, sys, time
sys.path.insert(0, "bench")
import bench_bus as bb

async def cpu_per_msg(subs, n):
    t0 = time.process_time()
    await bb.throughput(subs, n, "block")
    return (time.process_time() - t0) / n * 1e6

n = 200_000
out = {f"bus_block_{s}_us_per_msg": asyncio.run(cpu_per_msg(s, n)) for s in (1, 4)}
if hasattr(bb, "fast_lag_p95_ms"):  # since 5de1d6f (the head-of-line fix)
    out["bus_fast_lag_p95_ms_alone"] = asyncio.run(bb.fast_lag_p95_ms(False))
    out["bus_fast_lag_p95_ms_beside_slow"] = asyncio.run(bb.fast_lag_p95_ms(True))
print(json.dumps(out))
"""

MOTION = """
import json, sys, time
sys.path.insert(0, "bench")
import cv2
import bench_motion as bm
from _common import footage

cv2.setNumThreads(1)
out = {}
for w, h in ((1280, 720), (640, 360)):
    frames = bm.lumas(footage(), (w, h))
    bm.ours(frames[:20])  # warm-up
    t0 = time.process_time()
    bm.ours(frames)
    out[f"motion_ms_per_frame_{w}x{h}"] = (time.process_time() - t0) / len(frames) * 1000
print(json.dumps(out))
"""


def _env() -> dict[str, str]:
    # as bench/_common.service_env: no SPYONCINO_* from the caller's shell (tests set some)
    return {k: v for k, v in os.environ.items() if not k.startswith("SPYONCINO_")}


def _python(tree: Path) -> str:
    return str(tree / ".venv" / "bin" / "python")


def _snippet(tree: Path, code: str) -> dict[str, float]:
    out = subprocess.run(
        [_python(tree), "-c", code],
        cwd=tree,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _pipeline(tree: Path) -> dict[str, float]:
    clip = tree / "spyoncino" / "data" / "sample.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(
            f"cameras:\n  bench:\n    source: {clip}\n    file: {{pace: realtime}}\n"
            f"storage:\n  root: {tmp}/store\nlog:\n  level: warning\n"
            "status_page:\n  listen: 127.0.0.1:0\n  mdns: false\n"
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        subprocess.run(
            [_python(tree), "-m", "spyoncino", "run", "--config", str(cfg)],
            cwd=tmp,
            env=_env(),
            capture_output=True,
            check=True,
            timeout=900,
        )
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"pipeline_cpu_s": cpu, "pipeline_wall_s": wall}


def _commit(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()[:100]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/redesign_before_after.json"))
    ap.add_argument("--benches", default="bus,motion,pipeline", help="comma-separated subset")
    args = ap.parse_args()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
    for r in range(args.rounds):
        for bench in args.benches.split(","):
            for side, tree in sides.items():
                if bench == "bus":
                    got = _snippet(tree, BUS)
                elif bench == "motion":
                    got = _snippet(tree, MOTION)
                else:
                    got = _pipeline(tree)
                for k, v in got.items():
                    runs[side].setdefault(k, []).append(round(v, 4))
                print(f"round {r + 1} {bench} {side}: {got}", flush=True)
    table: dict[str, Any] = {}
    for key in runs["after"]:
        row: dict[str, Any] = {}
        for side in sides:
            vals = runs[side].get(key, [])
            if vals:
                row[side] = {
                    "median": round(statistics.median(vals), 4),
                    "spread": round(max(vals) - min(vals), 4),
                    "runs": vals,
                }
        if len(row) == 2:
            b, a = row["before"], row["after"]
            row["after_over_before"] = round(a["median"] / b["median"], 3)
            row["change_within_spread"] = abs(a["median"] - b["median"]) <= max(
                b["spread"], a["spread"]
            )
        table[key] = row
    doc = {
        "benchmark": "redesign_before_after",
        "issue": 16,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rounds": args.rounds,
        "before": _commit(sides["before"]),
        "after": _commit(sides["after"]),
        "note": "CPU time unless the name says lag or wall; rounds interleaved before/after; "
        "the 2-core machine was shared with other heavy jobs (load 5-20)",
        "results": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
