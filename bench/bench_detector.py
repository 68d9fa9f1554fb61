"""Object detector: ms per inference per model and backend, pre+post share, gating saving.

1. Every shared model (``../shared/models``) and the bundled one, on every runtime installed
   here (LiteRT, tflite_runtime, ONNX Runtime), 2 threads, on frame 100 of the footage:
   median ms of bare ``invoke()`` and of our pre- and post-processing **with the colour
   conversion the detector needs**: ``pre_from_frame_ms`` runs the model on the frame as the
   input hands it over (``helpers.camera.av_frame_to_raw``), so the crop is converted from the
   decoder's I420 planes at the model's size (``Frame.resizer``), as the detector does. Beside
   it, ``pre_ms`` from a ready BGR image plus ``colour_ms``, the full-size conversion the
   detector made before (and a snapshot still makes). Target: pre + colour + post <= 10 % of
   invoke (``pre_colour_post_share_of_invoke``, from the frame).
2. int8 vs fp32 person model: speed and agreement.
3. Motion gating, on three replays: **vtest** as it is (people in view nearly all the time:
   the worst case for gating), the **arrivals** replay of the alert-latency bench (people
   walking in after stretches of empty background: a street camera's day), and the older
   **synthetic** one (vtest frames between quiet stretches, people a third of the time).
   Each is played in real time (10 fps) through the real bus, the real motion module and the
   real detector (max 5 inferences/s): detector CPU with gating (motion-triggered, cropped)
   vs without (every frame, full frame), minus a motion-only run, 3 rounds interleaved.
   Target: >= 2.5x less detector CPU, no person event missed -- reported for each replay;
   only the arrivals figure describes a camera that is mostly empty. ``--synthetic`` adds
   the older synthetic replay (vtest frames between quiet stretches).
4. False alarms of enlarged crops (``max_zoom``): 60 s of the clip's empty background with a
   swaying branch, a bird, a cloud's shadow and a plastic bag, through the same pipeline with
   ``max_zoom`` 1 and 2: frames where a person is reported (target: none).

Writes bench/results/detector.json.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, footage, write_result

from spyoncino.core.bus import Bus, Message
from spyoncino.core.config import Layer, build_app_model, validate
from spyoncino.core.contracts import BoundedExecutor, ModuleContext
from spyoncino.modules.process._backends import open_backend
from spyoncino.modules.process._decoders import Model, read_labels
from spyoncino.modules.process.detector import ObjectDetector, bundled_model_path
from spyoncino.schemas import topics
from spyoncino.schemas.frames import Frame

MODELS = next(
    (p for p in (REPO.parent / "shared" / "models", Path("/work/shared/models")) if p.is_dir()),
    None,
)
THREADS = 2
WARMUP, RUNS = 5, 40
FPS, DETECT_FPS = 10.0, 5.0
REPEAT = 3


def frames(path: Path, first: int, last: int) -> list[np.ndarray]:
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i > last:
                break
            if i >= first:
                out.append(f.to_ndarray(format="bgr24"))
    return out


def labels_for(name: str) -> list[str]:
    assert MODELS is not None or name.startswith("person")
    if name.startswith("coco"):
        return read_labels(MODELS / "coco80_labels.txt")  # type: ignore[operator]
    if name.startswith("oidv4"):
        return read_labels(MODELS / "oidv4_labels.txt")  # type: ignore[operator]
    return ["person"]


def backends_for(path: Path) -> list[str]:
    if path.suffix == ".onnx":
        return ["onnx"] if importlib.util.find_spec("onnxruntime") else []
    out = []
    if importlib.util.find_spec("ai_edge_litert"):
        out.append("litert")
    if importlib.util.find_spec("tflite_runtime"):
        out.append("tflite")
    return out


def colour_ms(clip: Path, index: int = 100, runs: int = 40) -> float:
    """CPU ms to make the BGR image from a decoded frame's I420 planes, as the input does."""
    from spyoncino.helpers.camera import av_frame_to_raw

    with av.open(str(clip)) as c:
        f = next(itertools.islice(c.decode(video=0), index, None))
        times = []
        for _ in range(runs):
            raw = av_frame_to_raw(f, 320)
            t0 = time.process_time()
            raw.decode()
            times.append(time.process_time() - t0)
    return 1000 * statistics.median(times)


COLOUR_MS = 0.0  # set in main() from colour_ms()


def frame_of(clip: Path, index: int = 100) -> Frame:
    """Frame ``index`` of ``clip`` as a camera input publishes it (colour still undecoded)."""
    from spyoncino.helpers.camera import av_frame_to_raw

    with av.open(str(clip)) as c:
        f = next(itertools.islice(c.decode(video=0), index, None))
        raw = av_frame_to_raw(f, 320)
    return Frame(
        "bench",
        index,
        0.0,
        0.0,
        raw.width,
        raw.height,
        raw.luma,
        _decode=raw.decode,
        _resize=raw.resize,
    )


def time_model(path: Path, backend: str, image: np.ndarray, frame: Frame) -> dict[str, Any]:
    model = Model(
        open_backend(path, backend=backend, num_threads=THREADS),  # type: ignore[arg-type]
        labels_for(path.name),
    )
    for _ in range(WARMUP):
        model.run(image, None, 0.5)
    runs = [model.run(image, None, 0.5) for _ in range(RUNS)]
    # the frame never gets its full-size image here: every run converts its crop again
    from_frame = statistics.median(model.run(frame, None, 0.5).pre_ms for _ in range(RUNS))
    pre = statistics.median(r.pre_ms for r in runs)
    inv = statistics.median(r.invoke_ms for r in runs)
    post = statistics.median(r.post_ms for r in runs)
    dets = runs[-1].detections
    return {
        "model": path.name,
        "backend": model.backend.name,
        "format": model.format,
        "input": list(model.input_size),
        "invoke_ms_p50": round(inv, 2),
        "invoke_ms_min": round(min(r.invoke_ms for r in runs), 2),
        "pre_ms_p50": round(pre, 3),
        "post_ms_p50": round(post, 3),
        "pre_post_share_of_invoke": round((pre + post) / inv, 4),
        "pre_from_frame_ms_p50": round(from_frame, 3),
        "pre_colour_post_share_of_invoke": round((from_frame + post) / inv, 4),
        "colour_ms": round(COLOUR_MS, 3),
        "pre_full_colour_post_share_of_invoke": round((pre + post + COLOUR_MS) / inv, 4),
        "detections_at_0_5": len(dets),
        "persons_at_0_5": sum(d.label == "person" for d in dets),
    }


def model_table(image: np.ndarray, frame: Frame) -> list[dict[str, Any]]:
    paths = [bundled_model_path()]
    if MODELS is not None:
        paths += sorted(p for p in MODELS.iterdir() if p.suffix in (".tflite", ".onnx"))
    rows = []
    for path in paths:
        for backend in backends_for(path):
            row = time_model(path, backend, image, frame)
            row["bundled"] = path == bundled_model_path()
            print(
                f"{row['model']:45s} {row['backend']:10s} invoke {row['invoke_ms_p50']:7.2f} ms"
                f"  pre {row['pre_ms_p50']:.3f}  post {row['post_ms_p50']:.3f}"
                f"  share {100 * row['pre_colour_post_share_of_invoke']:.1f} % with colour",
                flush=True,
            )
            rows.append(row)
    return rows


# -- gating replay -----------------------------------------------------------------------------
def empty_background(sample: list[np.ndarray]) -> np.ndarray:
    """The clip's own background: the median over time removes the people walking through."""
    return np.median(np.stack(sample[::5]), axis=0).astype(np.uint8)


def noisy(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, 2.5, img.shape).astype(np.float32)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def build_replay(clip: Path) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """quiet 100, people 75, quiet 100, people 75, quiet 100 frames: people 1/3 of the time."""
    sample = frames(clip, 0, 249)
    background = empty_background(sample)
    rng = np.random.default_rng(7)

    def quiet(n: int) -> list[np.ndarray]:
        return [noisy(background, rng) for _ in range(n)]

    replay: list[np.ndarray] = []
    segments: list[tuple[int, int]] = []
    replay += quiet(100)
    segments.append((len(replay), len(replay) + 75))
    replay += sample[20:95]
    replay += quiet(100)
    segments.append((len(replay), len(replay) + 75))
    replay += sample[150:225]
    replay += quiet(100)
    return replay, segments


def luma_of(img: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    return cv2.resize(grey, (320, round(320 * h / w)), interpolation=cv2.INTER_AREA)


NUISANCE_S = 15  # seconds of each nuisance


def build_nuisances(clip: Path) -> tuple[list[np.ndarray], list[str]]:
    """The clip's empty background with sensor noise and, 15 s each, small things that move
    but are not people: a swaying branch, a bird crossing again and again, a cloud's shadow
    sliding over the car park, a plastic bag tumbling along the road. Small motion is where
    ``max_zoom`` enlarges the crop, so this is where it could invent people."""
    background = empty_background(frames(clip, 0, 249))
    rng = np.random.default_rng(11)
    h, w = background.shape[:2]
    n = int(NUISANCE_S * FPS)
    out: list[np.ndarray] = []
    for i in range(n):  # a branch: a 60x80 patch of the scene swaying by up to 6 px
        img = background.copy()
        dx = round(6 * np.sin(2 * np.pi * i / 15))
        x, y = 200, 0  # the tree by the left-hand building
        img[y : y + 80, x : x + 60] = background[y : y + 80, x + dx : x + 60 + dx]
        out.append(noisy(img, rng))
    for i in range(n):  # a bird: a dark 14x8 blob crossing the frame every 4 s
        img = background.copy()
        t = (i % 40) / 40
        cx, cy = int(40 + t * (w - 80)), int(150 + 40 * np.sin(2 * np.pi * t * 2))
        cv2.ellipse(img, (cx, cy), (7, 4), 0, 0, 360, (40, 40, 40), -1)
        out.append(noisy(img, rng))
    for i in range(n):  # a cloud's shadow: a soft 160x90 ellipse 30 % darker, 3 px a frame
        shade = np.zeros((h, w), np.float32)
        cv2.ellipse(shade, (100 + 3 * i, 380), (80, 45), 0, 0, 360, 0.3, -1)
        shade = cv2.GaussianBlur(shade, (31, 31), 0)
        img = (background * (1.0 - shade[..., None])).astype(np.uint8)
        out.append(noisy(img, rng))
    for i in range(n):  # a plastic bag: a light 24x18 blob rolling along the road
        img = background.copy()
        angle = 25 * i
        cv2.ellipse(img, (700 - 5 * i, 470 + (i % 6)), (12, 9), angle, 0, 360, (215, 215, 210), -1)
        out.append(noisy(img, rng))
    return out, ["branch", "bird", "shadow", "bag"]


def nuisances(clip: Path) -> dict[str, Any]:
    """Frames with a person found on the nuisance replay, crops as they are and enlarged 2x
    (``max_zoom``); the first figure the tracker would alert on needs two of them."""
    replay, names = build_nuisances(clip)
    n = int(NUISANCE_S * FPS)
    result: dict[str, Any] = {"seconds": len(replay) / FPS, "nuisances": names}
    for zoom in (1.0, 2.0):
        r = asyncio.run(replay_run(replay, "gated", {"max_zoom": zoom}))
        hits = r["frames_with_person"]
        result[f"max_zoom_{zoom:g}"] = {
            "inferences": r["inferences"],
            "frames_with_person": len(hits),
            "by_nuisance": {
                name: sum(k * n <= s < (k + 1) * n for s in hits) for k, name in enumerate(names)
            },
        }
    return result


async def replay_run(
    replay: Any, mode: str, detector: dict[str, Any] | None = None
) -> dict[str, Any]:
    """mode: motion (baseline, no detector), gated, ungated; ``detector``: extra settings.

    ``replay``: a list of BGR frames, or a path to a video decoded on the fly; played in real
    time at 10 fps (the detector's "no newer frame for an interval" rule runs on the wall
    clock, so a faster replay would infer other frames)."""
    from spyoncino.modules.process.motion import MotionDetector

    registry: dict[str, Any] = {"motion": MotionDetector, "detector": ObjectDetector}
    for name, cls in registry.items():
        cls.name = name
    det_cfg = (
        {"trigger": "motion", "crop": True}
        if mode == "gated"
        else {"trigger": "always", "crop": False}
    )
    raw = {
        "cameras": {"cam": {"source": "cam.mp4", "detector": {"max_fps": DETECT_FPS}}},
        "detector": {**det_cfg, **(detector or {})},
    }
    app = validate(build_app_model(registry), [Layer("bench", raw)])
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(workers=2)
    mods: list[Any] = []
    kinds = ["motion"] if mode == "motion" else ["motion", "detector"]
    for name in kinds:
        ctx = ModuleContext(bus=bus, executor=executor, app=app, instance=name)
        m = registry[name](ctx)
        await m.configure(app)
        await m.start()
        mods.append(m)
    persons: dict[int, int] = {}

    async def on_objects(msg: Message[Any]) -> None:
        ev = msg.payload
        persons[ev.seq] = sum(d.label == "person" for d in ev.detections)

    bus.subscribe(topics.OBJECTS.name, on_objects, policy="block", maxsize=1000, module="bench")
    source = video_frames(replay) if isinstance(replay, Path) else iter(replay)
    stages = (topics.FRAME.at(camera="cam"), topics.MOTION.name, topics.OBJECTS.name)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    for i, img in enumerate(source):
        due = t0 + i / FPS
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        h, w = img.shape[:2]
        frame = Frame("cam", i, time.monotonic(), time.time(), w, h, luma_of(img), _image=img)
        await bus.publish(topics.FRAME.at(camera="cam"), frame)
    await asyncio.sleep(0.5)
    await bus.wait_idle(*stages)
    await bus.drain(timeout=5.0)
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - t0
    out: dict[str, Any] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 2)}
    if mode != "motion":
        det = mods[-1]
        m = det.metrics()
        out.update(
            inferences=m["inferences"],
            inference_ms_p50=m["inference_ms_p50"],
            crop_share_avg=m["crop_share_avg"],
            frames_with_person=sorted(s for s, n in persons.items() if n),
        )
    for m in reversed(mods):
        await m.stop()
    await bus.close()
    executor.shutdown()
    return out


def video_frames(path: Path) -> Any:
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            yield f.to_ndarray(format="bgr24")


def replays(clip: Path, tmp: Path) -> dict[str, tuple[Any, list[tuple[int, int]], int]]:
    """name -> (frames or a video path, segments with people, frame count)."""
    from bench_alert_latency import STRETCH, build_arrivals

    synthetic, segments = build_replay(clip)
    with av.open(str(clip)) as c:
        n_clip = sum(1 for _ in c.decode(video=0))
    arrivals = tmp / "arrivals.mp4"
    starts = build_arrivals(clip, arrivals, stretches=4, quiet=100)
    n_arr = sum(1 for _ in video_frames(arrivals))
    out: dict[str, tuple[Any, list[tuple[int, int]], int]] = {
        "vtest": (clip, [(0, n_clip)], n_clip),
        "arrivals": (arrivals, [(a, a + STRETCH) for a in starts], n_arr),
    }
    if "--synthetic" in sys.argv:
        out["synthetic"] = (synthetic, segments, len(synthetic))
    return out


def gating(clip: Path) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sets = replays(clip, Path(tmp))
        out: dict[str, Any] = {
            name: gating_one(replay, segments, n) for name, (replay, segments, n) in sets.items()
        }
    out["detector_cpu_cut"] = out["arrivals"]["detector_cpu_cut"]
    out["no_person_event_missed"] = all(out[k]["no_person_event_missed"] for k in sets)
    return out


def gating_one(replay: Any, segments: list[tuple[int, int]], n_frames: int) -> dict[str, Any]:
    people_frames = sum(b - a for a, b in segments)
    # Other work on the machine moves CPU time per inference by +-15 %: play the replay
    # REPEAT times per mode, interleaved, and average the CPU times.
    runs: dict[str, dict[str, Any]] = {}
    cpu: dict[str, list[float]] = {"motion": [], "gated": [], "ungated": []}
    for _ in range(REPEAT):
        for mode in ("motion", "gated", "ungated"):
            runs[mode] = asyncio.run(replay_run(replay, mode))
            cpu[mode].append(runs[mode]["cpu_s"])
    base = statistics.fmean(cpu["motion"])
    det_cpu = {m: max(1e-3, statistics.fmean(cpu[m]) - base) for m in ("gated", "ungated")}

    def events(frames_with_person: list[int]) -> list[bool]:
        return [any(a <= s < b for s in frames_with_person) for a, b in segments]

    def false_frames(frames_with_person: list[int]) -> int:
        return sum(not any(a <= s < b for a, b in segments) for s in frames_with_person)

    result: dict[str, Any] = {
        "replay": {
            "frames": n_frames,
            "fps": FPS,
            "detect_max_fps": DETECT_FPS,
            "people_share": round(people_frames / n_frames, 3),
            "segments_with_people": segments,
        },
        "motion_only_cpu_s": round(base, 3),
        "repeats": REPEAT,
        "process_cpu_s_per_run": cpu,
    }
    for mode in ("gated", "ungated"):
        r = runs[mode]
        seconds_people = people_frames / FPS
        in_people = sum(1 for s in r["frames_with_person"] if any(a <= s < b for a, b in segments))
        result[mode] = {
            "process_cpu_s": round(statistics.fmean(cpu[mode]), 3),
            "detector_cpu_s": round(det_cpu[mode], 3),
            "inferences": r["inferences"],
            "inference_ms_p50": r["inference_ms_p50"],
            "crop_share_avg": r["crop_share_avg"],
            "person_events_found": events(r["frames_with_person"]),
            "frames_with_person_in_people_segments": in_people,
            "detection_fps_while_people_present": round(in_people / seconds_people, 2),
            "frames_with_person_outside_segments": false_frames(r["frames_with_person"]),
        }
        print(mode, result[mode], flush=True)
    result["detector_cpu_cut"] = round(det_cpu["ungated"] / det_cpu["gated"], 2)
    # the count behind the CPU figure, free of the machine's load: 3.0 is the ceiling here
    result["inference_cut"] = round(runs["ungated"]["inferences"] / runs["gated"]["inferences"], 2)
    gated, ungated = (
        result["gated"]["person_events_found"],
        result["ungated"]["person_events_found"],
    )
    result["no_person_event_missed"] = all(g or not u for g, u in zip(gated, ungated, strict=True))
    return result


def main() -> None:
    global COLOUR_MS
    clip = footage()
    image = frames(clip, 100, 100)[0]
    COLOUR_MS = colour_ms(clip)
    table = model_table(image, frame_of(clip))
    if "--models-only" in sys.argv[1:]:  # part 1 alone, in seconds rather than minutes
        write_result("detector_models", {"footage": clip.name, "threads": THREADS, "models": table})
        return
    by = {(r["model"], r["backend"]): r for r in table}
    int8 = by.get(("person_ssdlite_mobilenet_v2_int8.tflite", "litert"))
    fp32 = by.get(("person_ssdlite_mobilenet_v2_fp32.tflite", "litert"))
    gate = gating(clip)
    false_alarms = nuisances(clip)
    share_max = max(r["pre_colour_post_share_of_invoke"] for r in table)
    write_result(
        "detector",
        {
            "footage": clip.name,
            "threads": THREADS,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "models": table,
            "int8_vs_fp32": {
                "int8_invoke_ms": int8["invoke_ms_p50"] if int8 else None,
                "fp32_invoke_ms": fp32["invoke_ms_p50"] if fp32 else None,
                "int8_persons": int8["persons_at_0_5"] if int8 else None,
                "fp32_persons": fp32["persons_at_0_5"] if fp32 else None,
            },
            "gating": gate,
            "nuisances": false_alarms,
            "targets": {
                "pre_colour_post_share_of_invoke_max": share_max,
                "pre_post_share_of_invoke_max_without_colour": max(
                    r["pre_post_share_of_invoke"] for r in table
                ),
                "pre_post_share_target": 0.10,
                "pre_post_share_met": share_max <= 0.10,
                "gating_cut_arrivals": gate["detector_cpu_cut"],
                "gating_cut_vtest": gate["vtest"]["detector_cpu_cut"],
                "gating_cut_synthetic": gate.get("synthetic", {}).get("detector_cpu_cut"),
                "gating_cut_target": 2.5,
                "gating_cut_met": gate["detector_cpu_cut"] >= 2.5,
                "no_person_event_missed": gate["no_person_event_missed"],
                "nuisance_frames_with_person": {
                    k: v["frames_with_person"] for k, v in false_alarms.items() if k[:4] == "max_"
                },
            },
        },
    )


if __name__ == "__main__":
    main()
