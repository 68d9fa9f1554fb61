"""Whole-pipeline CPU seconds per minute of replayed video, and media bytes written.

Runs ``spyoncino run`` as a user would (the embedded defaults: motion, detection with the
bundled model, tracking, snapshots, animations, clips, index) on a clip replayed in real
time, and reads the child process's CPU time (user + system, all threads). Real time
matters: it is what a camera delivers, and the detector only runs where there is motion.

Two configurations, rounds interleaved (``--rounds``, 3 by default): ``default`` (since #20:
clips remuxed from the camera's H.264 packets, animations as MP4) and ``before_20``
(``clip.remux: false``, ``gif.format: gif``: every sampled frame converted for the clip's
pre-roll and encoded during events, animations as GIFs, as before #20). Media bytes: the
files under the storage root at the end (snapshots, animations, clips), per minute of
video. ``--full`` replays vtest (the busy scene) instead of the packaged sample. The machine
is shared with other jobs: medians and every run.

Two figures per side: ``cpu_s_per_video_minute`` is the whole process, launch to exit
(interpreter start-up, imports and model load included: about 1.3 s of CPU here), and
``steady_cpu_s_per_video_minute`` what the running box costs: the CPU from the first frame
published (the ``camera_streaming`` log line, as ``bench_startup.py`` times start-up) to the
exit, over the video's length. Start-up has its own bench and target (``bench_startup.py``).

Since the animation is cut from the clip, ``gif.format: gif`` decodes a few seconds of the
clip instead of sampling frames during the event, so the ``before_20`` config no longer costs
what it did on the tree it was measured on. ``--side NAME=DIR`` (repeatable) adds a side that
runs another checkout's code (``git archive <commit> | tar -x -C DIR``) from this venv
(``PYTHONPATH=DIR``) with its own defaults, ``--side NAME=DIR,before_20`` with the
``before_20`` config, interleaved with the others; e.g. the tree from before #20 itself
(``85f8dcc^``: one event per object then, so more media) or the tree before a change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE, footage, service_env, write_result
from bench_idle import proc_cpu


def duration_s(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.frames / s.average_rate)


CONFIGS = {
    "default": "",
    "before_20": "clip:\n  remux: false\ngif:\n  format: gif\n",
}


def media_bytes(root: Path) -> dict[str, int]:
    out = {"snapshot": 0, "animation": 0, "clip": 0}
    for p in root.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name.endswith((".anim.mp4", ".gif")):
            out["animation"] += p.stat().st_size
        elif p.suffix == ".mp4":
            out["clip"] += p.stat().st_size
        elif p.suffix == ".jpg":
            out["snapshot"] += p.stat().st_size
    return out


def run(clip: Path, pace: str, extra: str = "", tree: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(
            f"cameras:\n  bench:\n    source: {clip}\n    file: {{pace: {pace}}}\n"
            f"storage:\n  root: {tmp}/store\nlog:\n  level: info\n  format: json\n"
            "status_page:\n  listen: 127.0.0.1:0\n  mdns: false\n" + extra
        )
        env = service_env()
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        t0 = time.monotonic()
        # the child's own rusage from wait4: RUSAGE_CHILDREN's ru_maxrss is the largest of
        # every child waited for so far, which gave every side the first big run's peak
        proc = subprocess.Popen(
            [sys.executable, "-m", "spyoncino", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=tree,
        )
        assert proc.stdout is not None
        started: float | None = None
        tail: list[bytes] = []
        for line in proc.stdout:  # the log, JSON lines; the first frame ends start-up
            if started is None and b'"camera_streaming"' in line:
                started = proc_cpu(proc.pid)
            tail = [*tail[-20:], line]
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or started is None:
            raise RuntimeError(f"spyoncino run exited {proc.returncode}: {b''.join(tail)!r}")
        wall = time.monotonic() - t0
        cpu = usage.ru_utime + usage.ru_stime
        return {
            "cpu_s": round(cpu, 3),
            "startup_cpu_s": round(started, 3),
            "wall_s": round(wall, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "media_bytes": media_bytes(Path(tmp) / "store"),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="vtest (busy) instead of the sample")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--side",
        action="append",
        default=[],
        help="NAME=DIR[,before_20]: another checkout's code as one more side",
    )
    args = ap.parse_args()
    clip = footage() if args.full else SAMPLE
    video_s = duration_s(clip)
    sides: dict[str, tuple[str, Path | None]] = {k: (v, None) for k, v in CONFIGS.items()}
    for spec in args.side:
        name, _, where = spec.partition("=")
        tree, _, config = where.partition(",")
        sides[name] = (CONFIGS[config] if config else "", Path(tree).resolve())
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for _ in range(args.rounds):  # interleaved: the machine's load hits every side alike
        for name, (extra, tree) in sides.items():
            runs[name].append(run(clip, "realtime", extra, tree))
    results: dict[str, Any] = {
        "clip": clip.name,
        "video_s": round(video_s, 2),
        "rounds": args.rounds,
        "note": "cpu_s: launch to exit, start-up (imports, model load) included; steady_cpu_s: "
        "from the first frame published to the exit. "
        "Sides named "
        "otherwise than default and before_20 run another checkout (see --side). "
        "before_20: clip.remux false + gif.format gif. Medians and every run (the machine "
        "may be shared with other jobs: see docs/performance.md for the conditions).",
    }
    for name, rs in runs.items():
        per_min = [round(r["cpu_s"] / video_s * 60, 2) for r in rs]
        steady = [round((r["cpu_s"] - r["startup_cpu_s"]) / video_s * 60, 2) for r in rs]
        media = [sum(r["media_bytes"].values()) for r in rs]
        results[name] = {
            "cpu_s_per_video_minute_median": statistics.median(per_min),
            "cpu_s_per_video_minute_runs": per_min,
            "steady_cpu_s_per_video_minute_median": statistics.median(steady),
            "steady_cpu_s_per_video_minute_runs": steady,
            "startup_cpu_s_median": statistics.median(r["startup_cpu_s"] for r in rs),
            "media_bytes_per_video_minute_median": round(statistics.median(media) / video_s * 60),
            "media_bytes_by_kind_last_run": rs[-1]["media_bytes"],
            "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in rs),
        }
    for name in sides:
        if name == "default":
            continue
        key = "before" if name == "before_20" else name
        for figure, suffix in (("cpu", ""), ("steady_cpu", "_steady")):
            results[f"default_vs_{key}_cpu{suffix}"] = round(
                results["default"][f"{figure}_s_per_video_minute_median"]
                / results[name][f"{figure}_s_per_video_minute_median"],
                3,
            )
    write_result("pipeline", results)


if __name__ == "__main__":
    main()
