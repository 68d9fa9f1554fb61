"""What the bundled NanoDet model's one MIRROR_PAD op costs, and a drop-in that costs less.

On the busy scene (``bench_pipeline.py --full``) py-spy puts a quarter of the active CPU in
TFLite's builtin ``MIRROR_PAD`` kernel (op 3 of ``coco_nanodet_m_416_int8.tflite``,
208x208x32 int8, not delegated to XNNPACK), which pads by one pixel before a 3x3 stride-2
``MAX_POOL_2D``. A reflected border pixel is one every pooling window holding it already
has, so a constant pad of the int8 minimum (``PADV2``, which XNNPACK takes) gives the same
maxima. This rewrites the op in a copy of the model (in a temporary folder; the bundled file
is not touched), checks the outputs are bit-identical on random inputs and on real frames,
and times ``invoke`` (CPU time, interleaved rounds). Writes ``bench/results/mirror_pad.json``.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import footage, write_result

MODEL = (
    Path(__file__).resolve().parents[1]
    / "spyoncino"
    / "data"
    / "models"
    / "coco_nanodet_m_416_int8.tflite"
)


def without_mirror_pad(src: Path, dst: Path) -> int:
    """Write ``src`` with every MIRROR_PAD that feeds a MAX_POOL_2D made a PADV2 of the int8
    minimum; returns how many were replaced."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(src.read_bytes(), 0))
    ops = s.BuiltinOperator

    def code(op: Any) -> int:
        oc = model.operatorCodes[op.opcodeIndex]
        return int(max(oc.builtinCode, oc.deprecatedBuiltinCode))

    padv2 = s.OperatorCodeT()
    padv2.builtinCode = padv2.deprecatedBuiltinCode = ops.PADV2
    padv2.version = 1
    model.operatorCodes.append(padv2)
    graph = model.subgraphs[0]
    replaced = 0
    for op in graph.operators:
        if code(op) != ops.MIRROR_PAD:
            continue
        out = op.outputs[0]
        users = [o for o in graph.operators if out in list(o.inputs)]
        if not users or any(code(u) != ops.MAX_POOL_2D for u in users):
            continue  # only where a max-pool makes the border value irrelevant
        value = s.BufferT()
        value.data = np.array([-128], np.int8).tobytes()
        model.buffers.append(value)
        const = s.TensorT()
        const.shape, const.type = [1], s.TensorType.INT8
        const.buffer, const.name = len(model.buffers) - 1, b"pad_min"
        const.quantization = copy.deepcopy(graph.tensors[op.inputs[0]].quantization)
        graph.tensors.append(const)
        op.opcodeIndex = len(model.operatorCodes) - 1
        op.inputs = [*list(op.inputs), len(graph.tensors) - 1]
        op.builtinOptionsType = s.BuiltinOptions.PadV2Options
        op.builtinOptions = s.PadV2OptionsT()
        replaced += 1
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(builder.Output())
    return replaced


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
        rewritten = Path(d) / "nanodet_padv2.tflite"
        replaced = without_mirror_pad(MODEL, rewritten)
        a, b = interpreter(MODEL), interpreter(rewritten)
        xs = inputs(list(a.get_input_details()[0]["shape"]))
        identical = all(
            all(np.array_equal(p, q) for p, q in zip(run(a, x), run(b, x), strict=True)) for x in xs
        )
        rounds: dict[str, list[float]] = {"bundled": [], "padv2": []}
        for _ in range(5):  # interleaved: the machine's load hits both
            rounds["bundled"].append(round(cpu_ms(a, xs[-1]), 2))
            rounds["padv2"].append(round(cpu_ms(b, xs[-1]), 2))
    write_result(
        "mirror_pad",
        {
            "model": MODEL.name,
            "replaced_ops": replaced,
            "outputs_identical": identical,
            "inputs_checked": len(xs),
            "invoke_cpu_ms_runs": rounds,
            "invoke_cpu_ms_median": {k: statistics.median(v) for k, v in rounds.items()},
            "note": "num_threads 2, CPU time (process_time) per invoke; the bundled model is "
            "not changed by this bench",
        },
    )


if __name__ == "__main__":
    main()
