"""Idle CPU per camera: a still scene (no motion) over RTSP, the whole app against its floor.

What an idle box pays for each camera, measured in the same run, rounds interleaved:

* ``decode``: the floor. A process that receives the stream and decodes every frame with
  PyAV exactly as our RTSP input opens it (one decoder thread up to 1280x720), and touches
  only the luma plane;
* ``decode_frigate``: the floor plus Frigate's real ``ImprovedMotionDetector`` on every frame
  (only when ``SPYONCINO_FRIGATE_SRC`` points at a Frigate checkout, see ``_frigate.py``);
* ``decode_motion``: the floor plus what spyoncino itself must do to every frame before any
  service around it: the luma plane shrunk to the motion width (``helpers.camera.shrink_luma``)
  and examined by the motion stage's own background model (``MotionState``, defaults), in the
  same process, no event loop, no bus. What is left between it and ``app`` is the service;
* ``app``: ``spyoncino run`` with the packaged default config (motion, detector, tracker,
  snapshots, GIFs, clips, index) and this one camera, status page on a free loopback port;
* ``app_encode``: the same with ``clip.remux: false``: the clip pre-roll converts every
  sampled frame to a 640-wide I420 ring (what every release before remux did);
* ``app_before`` (with ``--before PATH``): ``app`` run from an older tree (a ``git archive``
  of an earlier commit), interleaved with the others, so a change is judged against the
  code before it under the same load.

The scene: the first frame of the footage, scaled, with a little sensor noise per frame
(sigma 1.5, below any motion threshold) so the decoder works as it does on a real camera;
H.264 (x264 veryfast, a keyframe every 2 s, no B-frames, like a camera's main profile),
served by the GStreamer RTSP server of the test suite. CPU is user + system time of the
measured process (all its threads) over a window that starts ``--warm`` seconds after launch
(start-up excluded), as % of one core. Wall-clock is never the figure. The machine is shared:
each variant reports the median and the spread of its rounds.

Targets (issue #20): 640x360@5 app <= 1.5 % of a core and <= 1.25x decode + Frigate motion;
1280x720@10 app <= 1.25x decode. ``--profiles 1280x720@20_cap10`` measures a camera sending
twice what it is held to (``max_fps: 10``, a Pi 4's rate): ``decode`` still decodes every
frame, ``decode_motion`` examines every second one, the app drops the rest on the camera
thread. ``--before`` then shows what that drop saves against a tree that woke its loop for
every frame. Results go to ``idle.json`` (``--out NAME`` for another file).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, footage, rss_mb, service_env, write_result
from bench_rtsp import free_port, rtsp_server_missing, start_server

#: name -> (width, height, fps the camera sends, max_fps the camera is held to or 0)
PROFILES = {
    "640x360@5": (640, 360, 5, 0),
    "1280x720@10": (1280, 720, 10, 0),
    # a camera sending more than the board processes (a Pi 4's 10 fps): the frames over the
    # cap are decoded (H.264 needs every one) and dropped on the camera thread
    "1280x720@20_cap10": (1280, 720, 20, 10),
}
#: what ``make bench`` runs (the capped camera on request: ``--profiles``)
DEFAULT_PROFILES = ("640x360@5", "1280x720@10")


def make_still(path: Path, width: int, height: int, fps: int, seconds: float) -> Path:
    import av
    import cv2
    import numpy as np

    with av.open(str(footage())) as c:
        first = next(c.decode(video=0)).to_ndarray(format="bgr24")
    base = cv2.resize(first, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = 2 * fps
        s.codec_context.max_b_frames = 0
        s.codec_context.options = {"preset": "veryfast", "crf": "23", "bf": "0"}
        for i in range(round(seconds * fps)):
            noisy = base + rng.normal(0, 1.5, base.shape).astype(np.float32)
            img = np.clip(noisy, 0, 255).astype(np.uint8)
            vf = av.VideoFrame.from_ndarray(img, format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    return path


def cpu_self() -> float:
    t = os.times()
    return t.user + t.system


def proc_cpu(pid: int) -> float:
    """User + system seconds of a running process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# -- workers (own process) ---------------------------------------------------------------------
def run_decode(
    url: str, warm: float, window: float, frigate: bool, motion: bool = False, every: int = 1
) -> dict[str, Any]:
    import av
    import numpy as np

    det = None
    ours = None
    if motion:
        from spyoncino.helpers.camera import shrink_luma
        from spyoncino.modules.process.motion import Config as MotionConfig
        from spyoncino.modules.process.motion import MotionState

        ours = MotionState(MotionConfig())
    container = av.open(
        url,
        container_options={"rtsp_transport": "tcp", "allowed_media_types": "video"},
        timeout=(10, 5),
    )
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1 if stream.codec_context.width <= 1280 else 2
    t0 = time.monotonic()
    start_cpu = None
    frames = 0
    n = 0
    for packet in container.demux(stream):
        for f in packet.decode():
            n += 1
            if n % every:  # a capped camera: only every ``every``-th frame is looked at
                continue
            p = f.planes[0]
            y = np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : f.width]
            if frigate:
                if det is None:
                    import _frigate

                    det = _frigate.detector((f.height, f.width), 5)
                    if isinstance(det, str):
                        raise SystemExit(det)
                det.detect(y)
            if ours is not None:
                ours.process(shrink_luma(y, ours.cfg.width))
            now = time.monotonic()
            if start_cpu is None and now - t0 >= warm:
                start_cpu, start_t, frames = cpu_self(), now, 0
            elif start_cpu is not None:
                frames += 1
                if now - start_t >= window:
                    container.close()
                    cpu = cpu_self() - start_cpu
                    return {"core_pct": round(100 * cpu / (now - start_t), 2), "frames": frames}
    raise SystemExit("stream ended before the window")


def run_app(
    url: str, warm: float, window: float, extra: str, tree: Path = REPO, cap: float = 0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(
            f"cameras:\n  idle:\n    source: {url}\n"
            + (f"    max_fps: {cap:g}\n" if cap else "")
            + f"storage:\n  root: {tmp}/store\n"
            f"status_page:\n  listen: 127.0.0.1:{free_port()}\n"
            "log:\n  level: warning\n" + extra
        )
        env = service_env()
        env["PYTHONPATH"] = str(tree)
        proc = subprocess.Popen(
            [sys.executable, "-m", "spyoncino", "run", "--config", str(cfg)],
            env=env,
            cwd=tree,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            time.sleep(warm)
            if proc.poll() is not None:
                raise SystemExit(f"spyoncino run exited: {proc.stderr.read()[-2000:]!r}")  # type: ignore[union-attr]
            c0, t0 = proc_cpu(proc.pid), time.monotonic()
            time.sleep(window)
            c1, t1 = proc_cpu(proc.pid), time.monotonic()
            rss = rss_mb(proc.pid) or 0.0
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {"core_pct": round(100 * (c1 - c0) / (t1 - t0), 2), "rss_mb": round(rss, 1)}


def worker(
    kind: str, url: str, warm: float, window: float, before: str = "", every: int = 1, cap: int = 0
) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", kind, "--url", url]
    argv += ["--warm", str(warm), "--window", str(window), "--before", before]
    argv += ["--every", str(every), "--cap", str(cap)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    pct = [r["core_pct"] for r in runs]
    out: dict[str, Any] = {
        "core_pct_median": round(statistics.median(pct), 2),
        "core_pct_runs": pct,
        "core_pct_spread": round(max(pct) - min(pct), 2),
    }
    if "rss_mb" in runs[0]:
        out["rss_mb_median"] = round(statistics.median(r["rss_mb"] for r in runs), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--url")
    ap.add_argument("--warm", type=float, default=12.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profiles", default=",".join(DEFAULT_PROFILES), help=", ".join(PROFILES))
    ap.add_argument("--every", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--cap", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", help="variants not to run, comma-separated")
    ap.add_argument("--out", default="idle", help="result file in bench/results/ (no .json)")
    ap.add_argument(
        "--before",
        default="",
        help="a checkout of an older tree (its spyoncino/ package): its app runs as "
        "'app_before', interleaved with the others, for a fair before/after",
    )
    args = ap.parse_args()
    if args.worker:
        if args.worker in ("decode", "decode_frigate", "decode_motion"):
            res = run_decode(
                args.url,
                args.warm,
                args.window,
                args.worker == "decode_frigate",
                args.worker == "decode_motion",
                args.every,
            )
        else:
            extra = "clip:\n  remux: false\n" if args.worker == "app_encode" else ""
            tree = Path(args.before) if args.worker == "app_before" else REPO
            res = run_app(args.url, args.warm, args.window, extra, tree, args.cap)
        print(json.dumps(res))
        return 0

    load0 = os.getloadavg()
    reason = rtsp_server_missing()
    if reason:
        write_result(args.out, {"skipped": reason})
        return 0
    import _frigate

    frigate = _frigate.load()
    kinds = ["decode", "decode_motion", "app", "app_encode"]
    if not isinstance(frigate, str):
        kinds.insert(1, "decode_frigate")
    if args.before:
        kinds.insert(kinds.index("app"), "app_before")
    skip = set(args.skip.split(",")) - {""}
    if skip & {"decode", "app"}:
        raise SystemExit("--skip: decode and app are what every figure is measured against")
    kinds = [k for k in kinds if k not in skip]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.profiles.split(","):
            w, h, fps, cap = PROFILES[name]
            every = fps // cap if cap else 1
            clip = make_still(Path(tmp) / f"{name}.mp4", w, h, fps, args.warm + args.window + 20)
            port = free_port()
            server = start_server(clip, port)
            url = f"rtsp://127.0.0.1:{port}/cam"
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            try:
                for _ in range(args.rounds):  # interleaved: the box's load hits every variant
                    for kind in kinds:
                        runs[kind].append(
                            worker(kind, url, args.warm, args.window, args.before, every, cap)
                        )
            finally:
                server.kill()
                server.wait()
            res = {k: summary(v) for k, v in runs.items()}
            floor_key = "decode_frigate" if "decode_frigate" in res else "decode"
            app, floor = res["app"]["core_pct_median"], res[floor_key]["core_pct_median"]
            decode = max(1e-6, res["decode"]["core_pct_median"])
            res["app_vs_decode"] = round(app / decode, 2)
            if "decode_motion" in res:
                res["decode_motion_vs_decode"] = round(
                    res["decode_motion"]["core_pct_median"] / decode, 2
                )
                res["app_vs_decode_motion"] = round(
                    app / max(1e-6, res["decode_motion"]["core_pct_median"]), 2
                )
            if floor_key == "decode_frigate":
                res["app_vs_decode_frigate"] = round(app / max(1e-6, floor), 2)
            if "app_encode" in res:
                res["app_encode_vs_app"] = round(
                    res["app_encode"]["core_pct_median"] / max(1e-6, app), 2
                )
            if "app_before" in res:
                res["app_vs_app_before"] = round(
                    app / max(1e-6, res["app_before"]["core_pct_median"]), 2
                )
            results[name] = res
    write_result(
        args.out,
        {
            "scene": "still frame of the footage + sigma 1.5 noise, H.264 over RTSP/TCP on "
            "127.0.0.1, GOP 2 s, no B-frames",
            "window_s": args.window,
            "warm_s": args.warm,
            "rounds": args.rounds,
            "before": args.before or None,
            "load_average_1_5_15": {
                "start": [round(x, 2) for x in load0],
                "end": [round(x, 2) for x in os.getloadavg()],
            },
            "frigate": frigate
            if isinstance(frigate, str)
            else "ImprovedMotionDetector from " + os.environ.get(_frigate.ENV, ""),
            "note": "core_pct: user+system CPU of the process over the window, % of one core. "
            "The machine was shared with other heavy jobs (2 cores): medians and spread of "
            "interleaved rounds. app: packaged default config; app_encode: clip.remux false "
            "(the per-frame I420 pre-roll every release before remux had).",
            "profiles": results,
            "caps": {n: PROFILES[n][3] for n in results if PROFILES[n][3]},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
