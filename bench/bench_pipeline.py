"""Whole-pipeline CPU seconds per minute of replayed video.

Runs ``spyoncino run`` as a user would (the embedded defaults: motion, detection with the
bundled model, tracking, snapshots, index) on a clip replayed in real time, and reads the
child process's CPU time. Real time matters: it is what a camera delivers, and the detector
only runs where there is motion.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE, footage, write_result


def duration_s(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.frames / s.average_rate)


def run(clip: Path, pace: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(
            f"cameras:\n  bench:\n    source: {clip}\n    file: {{pace: {pace}}}\n"
            f"storage:\n  root: {tmp}/store\nlog:\n  level: warning\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPYONCINO_")}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "spyoncino", "run", "--config", str(cfg)],
            check=True,
            env=env,
            capture_output=True,
        )
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
        }


def main() -> None:
    clip = footage() if "--full" in sys.argv else SAMPLE
    video_s = duration_s(clip)
    realtime = run(clip, "realtime")
    results = {
        "clip": clip.name,
        "video_s": round(video_s, 2),
        "realtime": realtime,
        "cpu_s_per_video_minute": round(realtime["cpu_s"] / video_s * 60, 2),
        "cpu_share_of_one_core": round(realtime["cpu_s"] / realtime["wall_s"], 3),
        "note": "includes interpreter start-up and model load (about 1 s of CPU)",
    }
    write_result("pipeline", results)


if __name__ == "__main__":
    main()
