"""Event media: clip encoding cost, GIF build time, and what an idle hour writes to the card.

1. **Clip encoding** (libx264 ultrafast/zerolatency, as the clip module runs it): ms of CPU per
   second of clip at 1280x720 and 640x360, 10 fps, from real footage (vtest frames scaled),
   split into the I420 conversion the pre-roll ring does and the encode itself, plus the MP4
   mux; the bitrate that comes out.
2. **GIF build**: 50 frames, 480 px wide, the GIF module's palette + encode path, ms and size.
3. **Idle hour**: one simulated hour of a static camera (36,000 frames at 10 fps, the first
   vtest frame with sensor noise on the luma) through the real bus and the real motion,
   tracker, snapshot, GIF, clip, index and media modules, in lockstep with the frames' own
   clock. Measured: media bytes written (target 0), index + log bytes (target < 1 MB), and
   the process's ``write_bytes`` from ``/proc/self/io``.

Writes bench/results/media.json.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footage, write_result

from spyoncino.core.bus import Bus
from spyoncino.core.config import Layer, build_app_model, validate
from spyoncino.core.contracts import BoundedExecutor, ModuleContext
from spyoncino.core.logging import setup_logging
from spyoncino.helpers.camera import make_luma
from spyoncino.helpers.packets import cut_decodable
from spyoncino.modules.event.clip import (
    ClipRecorder,
    Config,
    _Session,
    encode_into,
    mux_mp4,
    open_encoder,
)
from spyoncino.modules.event.gif import GifMaker, encode_gif, encode_mp4
from spyoncino.modules.event.snapshot import SnapshotWriter
from spyoncino.modules.event.tracker import EventTracker
from spyoncino.modules.process.motion import MotionDetector
from spyoncino.modules.storage.index import EventIndex
from spyoncino.modules.storage.media import MediaRetention
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame

FPS = 10.0
IDLE_FRAMES = int(os.environ.get("BENCH_IDLE_FRAMES", 36_000))


def real_frames(n: int, first: int = 300) -> list[np.ndarray]:
    out = []
    with av.open(str(footage())) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= first:
                out.append(f.to_ndarray(format="bgr24"))
            if len(out) >= n:
                break
    return out


def bench_encode(frames: list[np.ndarray], size: tuple[int, int]) -> dict[str, Any]:
    cfg = Config(width=size[0])
    scaled = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    t0 = time.perf_counter()
    planes = [cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420) for f in scaled]
    convert_s = time.perf_counter() - t0
    session = _Session(codec=open_encoder("libx264", cfg, size), encoder="libx264", size=size)
    t0 = time.perf_counter()
    for i, p in enumerate(planes):
        encode_into(session, p, 100.0 + i / FPS)
    encode_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "c.mp4"
        t0 = time.perf_counter()
        duration = mux_mp4(cut_decodable(session.packets, 0, 10**12), size, FPS, out)
        mux_s = time.perf_counter() - t0
        size_bytes = out.stat().st_size
    seconds = len(frames) / FPS
    return {
        "size": f"{size[0]}x{size[1]}",
        "clip_seconds": seconds,
        "i420_ms_per_clip_s": round(1000 * convert_s / seconds, 2),
        "encode_ms_per_clip_s": round(1000 * encode_s / seconds, 2),
        "mux_ms_per_clip_s": round(1000 * mux_s / duration, 2),
        "total_ms_per_clip_s": round(1000 * (convert_s + encode_s + mux_s) / seconds, 2),
        "kbit_per_s": round(size_bytes * 8 / 1000 / duration, 1),
    }


def bench_gif(frames: list[np.ndarray]) -> dict[str, Any]:
    small = [cv2.resize(f, (480, 360), interpolation=cv2.INTER_AREA) for f in frames[::2][:50]]
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in small]
    runs = []
    size = 0
    with tempfile.TemporaryDirectory() as d:
        for _ in range(3):
            t0 = time.process_time()  # CPU, not wall: the machine is shared
            imgs = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in jpegs]
            encode_gif(imgs, 5.0, 128, Path(d) / "g.gif")
            runs.append(time.process_time() - t0)
            size = (Path(d) / "g.gif").stat().st_size
    # the default since #20: the same frames as one silent H.264 MP4 (sendAnimation takes it)
    mp4_runs = []
    mp4_size = 0
    with tempfile.TemporaryDirectory() as d:
        for _ in range(3):
            c0 = time.process_time()
            imgs = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in jpegs]
            encode_mp4(imgs, 5.0, 30, Path(d) / "a.anim.mp4")
            mp4_runs.append(time.process_time() - c0)
            mp4_size = (Path(d) / "a.anim.mp4").stat().st_size
    return {
        "frames": len(jpegs),
        "size": "480x360",
        "build_ms": round(1000 * min(runs), 1),
        "build_cpu_ms_runs": [round(1000 * r, 1) for r in runs],
        "bytes": size,
        "jpeg_buffer_bytes": sum(len(b) for b in jpegs),
        "mp4_build_cpu_ms_runs": [round(1000 * r, 1) for r in mp4_runs],
        "mp4_bytes": mp4_size,
    }


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def tree_bytes(root: Path) -> dict[str, int]:
    out = {"media": 0, "index": 0, "log": 0}
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        if p.name.startswith("events.sqlite3"):
            out["index"] += p.stat().st_size
        elif p.suffix == ".log":
            out["log"] += p.stat().st_size
        else:
            out["media"] += p.stat().st_size
    return out


async def bench_idle(still: np.ndarray) -> dict[str, Any]:
    registry: dict[str, Any] = {
        "motion": MotionDetector,
        "tracker": EventTracker,
        "snapshot": SnapshotWriter,
        "gif": GifMaker,
        "clip": ClipRecorder,
        "index": EventIndex,
        "media": MediaRetention,
    }
    for name, cls in registry.items():
        cls.name = name
    with tempfile.TemporaryDirectory(dir=Path.home()) as d:
        root = Path(d)
        log = open(root / "spyoncino.log", "w")  # noqa: SIM115 - closed below
        setup_logging("info", "json", log)
        app = validate(
            build_app_model(registry),
            [
                Layer(
                    "bench",
                    {"storage": {"root": str(root)}, "cameras": {"cam": {"source": "x.mp4"}}},
                )
            ],
        )
        bus = Bus(status_interval=0)
        executor = BoundedExecutor(workers=2)
        mods = []
        for name, cls in registry.items():
            ctx = ModuleContext(bus=bus, executor=executor, app=app, instance=name)
            m = cls(ctx)
            await m.configure(app)
            mods.append(m)
        for m in sorted(mods, key=lambda m: m.category != "storage"):
            await m.start()
        await bus.drain()
        after_start = tree_bytes(root)
        io0 = write_bytes()
        rng = np.random.default_rng(1)
        luma0 = make_luma(still, 320).astype(np.int16)
        h, w = still.shape[:2]
        topic = topics.FRAME.at(camera="cam")
        t0 = time.perf_counter()
        for i in range(IDLE_FRAMES):
            noise = rng.integers(-3, 4, luma0.shape, dtype=np.int16)
            luma = np.clip(luma0 + noise, 0, 255).astype(np.uint8)
            t = i / FPS
            frame = Frame("cam", i, t, 1.7e9 + t, w, h, luma, still, None)
            await bus.publish(topic, frame)
            await bus.wait_idle(topic, topics.MOTION.name, topics.OBJECTS.name)
        wall = time.perf_counter() - t0
        await bus.drain()
        for m in reversed(mods):
            await m.stop()
        await bus.close()
        executor.shutdown()
        log.flush()
        io1 = write_bytes()
        end = tree_bytes(root)
        log.close()
        motion = next(m for m in mods if isinstance(m, MotionDetector)).metrics()
        tracker = next(m for m in mods if isinstance(m, EventTracker)).metrics()
    return {
        "simulated_s": IDLE_FRAMES / FPS,
        "frames": IDLE_FRAMES,
        "replay_wall_s": round(wall, 1),
        "events": tracker.get("events_started", 0),
        "motion_frames": motion.get("motion_frames", 0),
        "media_bytes_written": end["media"] - after_start["media"],
        "index_bytes_growth": end["index"] - after_start["index"],
        "log_bytes": end["log"] - after_start["log"],
        "process_write_bytes": io1 - io0,
        "target": "0 media bytes, < 1 MB index + log",
        "ok": end["media"] == after_start["media"]
        and (end["index"] - after_start["index"]) + (end["log"] - after_start["log"]) < 1_000_000,
    }


def main() -> None:
    frames = real_frames(100)
    encode = [bench_encode(frames, (1280, 720)), bench_encode(frames, (640, 360))]
    gif = bench_gif(frames)
    idle = asyncio.run(bench_idle(frames[0]))
    write_result(
        "media",
        {
            "footage": footage().name,
            "clip_encode_libx264_ultrafast": encode,
            "gif_build": gif,
            "idle_hour": idle,
        },
    )


if __name__ == "__main__":
    main()
