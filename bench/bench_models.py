"""Detection models: the bundled full-int8 NanoDet against its fp16 original, and their speed.

1. Agreement on held-out footage: vtest frames 500-794 (the int8 model was calibrated on
   frames 0-499; the bundled ``sample.mp4`` is frames 0-249), whole frames, score >= 0.5 (the
   detector's default ``min_score``). A box of the fp16 model is matched when the int8 model
   has a box of the same label with IoU >= 0.5 (one to one, best score first). Reported:
   matched boxes, recall of people and of vehicles (car, truck, bus, bicycle, motorcycle)
   relative to fp16, and how many int8 boxes the fp16 model does not have. The dynamic-range
   NanoDet and the person-only SSDLite are measured the same way for comparison.
2. Speed: bare ``invoke()`` ms with 2 threads on LiteRT, the models interleaved round by round
   (other work on this 2-core machine moves single figures): per model the median of the
   round medians, and the lowest and highest round median as the spread.

Needs ``../shared`` (vtest and the fp16 model); without it the benchmark says so and stops.
Writes bench/results/models.json.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, VTEST, write_result

from spyoncino.modules.process._backends import open_backend
from spyoncino.modules.process._decoders import Model, RawDetection, read_labels

MODELS = next(
    (p for p in (REPO.parent / "shared" / "models", Path("/work/shared/models")) if p.is_dir()),
    None,
)
PACKAGED = REPO / "spyoncino" / "data" / "models"
INT8 = PACKAGED / "coco_nanodet_m_416_int8.tflite"
PERSON = PACKAGED / "person_ssdlite_mobilenet_v2_int8.tflite"
HELD_OUT = range(500, 795)
MIN_SCORE = 0.5
IOU = 0.5
VEHICLES = frozenset({"car", "truck", "bus", "bicycle", "motorcycle"})
THREADS = 2
ROUNDS, WARMUP, RUNS = 7, 5, 25


def frames(path: Path, wanted: range) -> list[np.ndarray]:
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= wanted.stop:
                break
            if i in wanted:
                out.append(f.to_ndarray(format="bgr24"))
    return out


def load(path: Path) -> Model:
    labels = (
        ["person"]
        if path.name.startswith("person")
        else read_labels(PACKAGED / "coco80_labels.txt")
    )
    return Model(open_backend(path, backend="litert", num_threads=THREADS), labels)


def iou(a: RawDetection, b: RawDetection) -> float:
    w = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    h = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = w * h
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def match(ref: list[RawDetection], got: list[RawDetection]) -> list[bool]:
    """For each reference box (best score first): is there an unused same-label box at IoU?"""
    used: set[int] = set()
    hit = []
    for r in sorted(ref, key=lambda d: -d.score):
        best, best_iou = -1, IOU
        for j, g in enumerate(got):
            if j not in used and g.label == r.label and (v := iou(r, g)) >= best_iou:
                best, best_iou = j, v
        if best >= 0:
            used.add(best)
        hit.append(best >= 0)
    return hit


def agreement(
    ref: list[list[RawDetection]], got: list[list[RawDetection]], labels: frozenset[str] | None
) -> dict[str, Any]:
    """How many of the reference boxes (of ``labels``, None: all) the other model finds."""
    total = matched = extra = boxes = 0
    per: dict[str, list[int]] = {}
    for r_frame, g_frame in zip(ref, got, strict=True):
        r = [d for d in r_frame if labels is None or d.label in labels]
        g = [d for d in g_frame if labels is None or d.label in labels]
        hits = match(r, g)
        total += len(r)
        matched += sum(hits)
        boxes += len(g)
        extra += len(g) - sum(hits)
        for d, h in zip(sorted(r, key=lambda d: -d.score), hits, strict=True):
            per.setdefault(d.label, [0, 0])
            per[d.label][0] += 1
            per[d.label][1] += h
    return {
        "reference_boxes": total,
        "matched": matched,
        "recall": round(matched / total, 3) if total else None,
        "boxes": boxes,
        "unmatched_boxes": extra,
        "by_label": {k: {"reference": v[0], "matched": v[1]} for k, v in sorted(per.items())},
    }


def detect_all(model: Model, images: list[np.ndarray]) -> list[list[RawDetection]]:
    return [model.run(img, None, MIN_SCORE).detections for img in images]


def speed(models: dict[str, Model], image: np.ndarray) -> dict[str, Any]:
    rounds: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        for _ in range(WARMUP):
            m.run(image, None, MIN_SCORE)
    for k in range(ROUNDS):
        order = list(models) if k % 2 == 0 else list(reversed(models))  # interleave both ways
        for name in order:
            runs = [models[name].run(image, None, MIN_SCORE).invoke_ms for _ in range(RUNS)]
            rounds[name].append(statistics.median(runs))
    return {
        name: {
            "invoke_ms_p50": round(statistics.median(r), 2),
            "round_p50_min": round(min(r), 2),
            "round_p50_max": round(max(r), 2),
        }
        for name, r in rounds.items()
    }


def main() -> None:
    if MODELS is None or VTEST is None or not (MODELS / "coco_nanodet_m_416_fp16.tflite").is_file():
        print("bench_models: skipped, ../shared (vtest.mp4 and the fp16 NanoDet) is not here")
        return
    paths = {
        "fp16": MODELS / "coco_nanodet_m_416_fp16.tflite",
        "int8": INT8,
        "drq": MODELS / "coco_nanodet_m_416_drq.tflite",
        "person_int8": PERSON,
    }
    models = {name: load(p) for name, p in paths.items()}
    images = frames(VTEST, HELD_OUT)
    found = {name: detect_all(m, images) for name, m in models.items()}
    ref = found["fp16"]
    quality: dict[str, Any] = {}
    for name in ("int8", "drq"):
        quality[name] = {
            "all": agreement(ref, found[name], None),
            "person": agreement(ref, found[name], frozenset({"person"})),
            "vehicles": agreement(ref, found[name], VEHICLES),
        }
        print(
            f"{name}: matched {quality[name]['all']['matched']}/"
            f"{quality[name]['all']['reference_boxes']}, person recall "
            f"{quality[name]['person']['recall']}, vehicle recall "
            f"{quality[name]['vehicles']['recall']}",
            flush=True,
        )
    quality["person_int8"] = {"person": agreement(ref, found["person_int8"], frozenset({"person"}))}
    load_before = [round(x, 2) for x in os.getloadavg()]
    times = speed(models, images[0])
    for name, t in times.items():
        print(
            f"{name:12s} invoke {t['invoke_ms_p50']:6.2f} ms "
            f"(rounds {t['round_p50_min']}-{t['round_p50_max']})",
            flush=True,
        )
    write_result(
        "models",
        {
            "footage": f"{VTEST.name} frames {HELD_OUT.start}-{HELD_OUT.stop - 1} (held out)",
            "frames": len(images),
            "min_score": MIN_SCORE,
            "iou": IOU,
            "reference": paths["fp16"].name,
            "files": {
                name: {"file": p.name, "mb": round(p.stat().st_size / 1e6, 2)}
                for name, p in paths.items()
            },
            "agreement_with_fp16": quality,
            "threads": THREADS,
            "load_average_before_timing": load_before,
            "load_average_after_timing": [round(x, 2) for x in os.getloadavg()],
            "invoke": times,
            "int8_vs_person_invoke_ratio": round(
                times["int8"]["invoke_ms_p50"] / times["person_int8"]["invoke_ms_p50"], 2
            ),
            "int8_vs_fp16_invoke_ratio": round(
                times["int8"]["invoke_ms_p50"] / times["fp16"]["invoke_ms_p50"], 2
            ),
        },
    )


if __name__ == "__main__":
    main()
