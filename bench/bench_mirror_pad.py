"""What the NanoDet model's pool padding costs: MIRROR_PAD (as shipped before) against PADV2.

On the busy scene (``bench_pipeline.py --full``) py-spy put a quarter of the active CPU in
TFLite's builtin ``MIRROR_PAD`` kernel (op 3 of ``coco_nanodet_m_416_int8.tflite``,
208x208x32 int8, not delegated to XNNPACK), which padded by one cell before a 3x3 stride-2
``MAX_POOL_2D``. The symmetric pad copies an edge cell every pooling window over it already
holds, so a constant pad of the int8 minimum (``PADV2``: LiteRT's own kernel too, but a
plain copy; XNNPACK's delegate takes PAD, not PADV2) gives the same
maxima: ``hardware/models/quantize_nanodet.py`` (step 4) now builds the bundled model so. This
bench puts the MIRROR_PAD back in a copy of the bundled model (in a temporary folder), checks
the outputs of the two are bit-identical on random inputs and on real frames, and times
``invoke`` (CPU time, interleaved rounds). Writes ``bench/results/mirror_pad.json``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, footage, write_result

sys.path.insert(0, str(REPO / "hardware" / "models"))  # quantize_nanodet, the model's script
MODEL = REPO / "spyoncino" / "data" / "models" / "coco_nanodet_m_416_int8.tflite"


def with_mirror_pad(src: Path, dst: Path) -> int:
    """Write ``src`` with every PADV2 of the int8 minimum that feeds only MAX_POOL_2D made the
    SYMMETRIC MIRROR_PAD it was built from; returns how many were put back (the model script's
    own graph maps and opcode lookup, step 4 backwards)."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils
    from quantize_nanodet import _graph_maps, _opcode

    model = flatbuffer_utils.read_model(str(src))
    graph = model.subgraphs[0]
    kind, readers = _graph_maps(model)
    put_back = 0
    for op in graph.operators:
        if kind[op.opcodeIndex] != fb.BuiltinOperator.PADV2:
            continue
        users = readers.get(op.outputs[0], [])
        if not users or any(kind[u.opcodeIndex] != fb.BuiltinOperator.MAX_POOL_2D for u in users):
            continue
        op.opcodeIndex = _opcode(model, fb.BuiltinOperator.MIRROR_PAD, 2)
        op.inputs = list(op.inputs)[:2]
        op.builtinOptionsType = fb.BuiltinOptions.MirrorPadOptions
        op.builtinOptions = fb.MirrorPadOptionsT()
        op.builtinOptions.mode = fb.MirrorPadMode.SYMMETRIC
        put_back += 1
    flatbuffer_utils.write_model(model, str(dst))
    return put_back


def inputs(shape: list[int], n_random: int = 4, n_real: int = 4) -> list[np.ndarray]:
    import av
    import cv2

    rng = np.random.default_rng(0)
    out = [rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(n_random)]
    with av.open(str(footage())) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 100 == 50:
                img = cv2.resize(f.to_ndarray(format="bgr24"), (shape[2], shape[1]))
                out.append((img.astype(np.int16) - 128).astype(np.int8)[None])
            if len(out) >= n_random + n_real:
                break
    return out


def interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=2)
    it.allocate_tensors()
    return it


def run(it: Any, x: np.ndarray) -> list[np.ndarray]:
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(o["index"]).copy() for o in it.get_output_details()]


def cpu_ms(it: Any, x: np.ndarray, n: int = 30) -> float:
    run(it, x)
    t0 = time.process_time()
    for _ in range(n):
        it.invoke()
    return (time.process_time() - t0) / n * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        before = Path(d) / "nanodet_mirror_pad.tflite"
        put_back = with_mirror_pad(MODEL, before)
        a, b = interpreter(before), interpreter(MODEL)
        xs = inputs(list(a.get_input_details()[0]["shape"]))
        identical = all(
            all(np.array_equal(p, q) for p, q in zip(run(a, x), run(b, x), strict=True)) for x in xs
        )
        rounds: dict[str, list[float]] = {"mirror_pad": [], "bundled_padv2": []}
        for _ in range(5):  # interleaved: the machine's load hits both
            rounds["mirror_pad"].append(round(cpu_ms(a, xs[-1]), 2))
            rounds["bundled_padv2"].append(round(cpu_ms(b, xs[-1]), 2))
    write_result(
        "mirror_pad",
        {
            "model": MODEL.name,
            "ops_put_back": put_back,
            "outputs_identical": identical,
            "inputs_checked": len(xs),
            "invoke_cpu_ms_runs": rounds,
            "invoke_cpu_ms_median": {k: statistics.median(v) for k, v in rounds.items()},
            "note": "num_threads 2, CPU time (process_time) per invoke; mirror_pad is the "
            "bundled model with its PADV2 made the MIRROR_PAD it replaced (the model shipped "
            "before), in a temporary copy",
        },
    )


if __name__ == "__main__":
    main()
