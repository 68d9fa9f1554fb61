"""Build the bundled full-int8 NanoDet-m 416 (COCO-80) from the fp16 TFLite file.

How the shipped ``spyoncino/data/models/coco_nanodet_m_416_int8.tflite`` was made, so that it can
be made again; nothing in the package, its tests or its install needs this script.

    python3 -m venv .cache/quant/venv
    .cache/quant/venv/bin/pip install ai-edge-quantizer==0.10.0 opencv-python-headless
    .cache/quant/venv/bin/python hardware/models/quantize_nanodet.py \\
        --shared ../shared --out spyoncino/data/models/coco_nanodet_m_416_int8.tflite

With ai-edge-quantizer 0.10.0, ai-edge-litert 2.3.0 and opencv-python-headless 5.0.0.93 it
writes the shipped file byte for byte (SHA-256 8a2b4338...5511be, about 2 minutes on 2 cores).

Steps, and why:

1. The fp16 file keeps its weights as float16 constants, each behind a DEQUANTIZE op, and has
   no signature. ai-edge-quantizer calibrates through a signature runner and quantizes float32
   weights, so the constants are widened to float32 in place of their DEQUANTIZE ops and a
   ``serving_default`` signature naming the input and the six outputs is added. Two more
   rewrites keep the fp32 result bit for bit: the max-pool's PADV2 with -65504 becomes an
   edge-repeating MIRROR_PAD (see ``_pool_pad_symmetric``: -65504 would wreck that tensor's
   int8 range) and stride-1 PAD + VALID convolutions become SAME convolutions.
2. Static quantization, int8 weights (per channel) and int8 activations, min/max calibrated on
   real frames: the bundled ``sample.mp4`` (vtest frames 0-249) and vtest frames 250-499, each
   whole and as a random crop enlarged up to 2x (the detector infers crops around motion).
   vtest frames 500-794 are never seen here: ``bench/bench_models.py`` evaluates on them.
   The quantizer makes the input and the outputs int8 itself (the detector folds the input
   quantization into its normalisation lookup table and dequantizes only candidate boxes).
3. The quantizer has no int8 LEAKY_RELU and leaves each one in float between a DEQUANTIZE and
   a QUANTIZE; LiteRT has int8 LEAKY_RELU kernels, so each such trio becomes one int8 op
   (``int8_leaky_relu``), and every op of the result runs in int8.
4. The int8 MIRROR_PAD of step 1 goes back to a constant pad, of the int8 minimum
   (``int8_pool_pad``): LiteRT runs MIRROR_PAD in its reference kernel, outside XNNPACK, and
   on 208x208x32 that one op was 11 of an inference's 19 ms of CPU (a quarter of the busy
   scene's CPU, bench/results/mirror_pad.json). LiteRT's PADV2 kernel is a plain copy; it
   stays outside XNNPACK too (whose delegate takes PAD, not PADV2: as a PAD of the zero point
   an invoke costs about 0.5 ms less, but the maxima at the border would change). The pooled
   maxima are the same bit for bit: every window over a padded cell also holds the edge cell
   the symmetric pad copied, and -128 is below every int8 value.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

MEAN = np.array([103.53, 116.28, 123.675], np.float32)  # BGR, NanoDet's own normalisation
STD = np.array([57.375, 57.12, 58.395], np.float32)
SIZE = 416
CALIB_VTEST = range(250, 500)  # sample.mp4 is vtest 0-249; 500-794 are held out
SIGNATURE = "serving_default"


def widen_fp16(src: Path, dst: Path) -> None:
    """fp16 constants + DEQUANTIZE -> float32 constants, plus a signature (step 1)."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    graph = model.subgraphs[0]
    dequantize = {
        i
        for i, code in enumerate(model.operatorCodes)
        if flatbuffer_utils.get_builtin_code_from_operator_code(code)
        == fb.BuiltinOperator.DEQUANTIZE
    }
    kept = []
    rewire: dict[int, int] = {}
    for op in graph.operators:
        if op.opcodeIndex in dequantize:
            t_in = graph.tensors[op.inputs[0]]
            data = model.buffers[t_in.buffer].data
            if t_in.type == fb.TensorType.FLOAT16 and data is not None and len(data):
                values = np.frombuffer(bytes(bytearray(data)), np.float16).astype(np.float32)
                model.buffers[t_in.buffer].data = np.frombuffer(values.tobytes(), np.uint8)
                t_in.type = fb.TensorType.FLOAT32
                rewire[op.outputs[0]] = op.inputs[0]  # consumers read the constant itself
                continue
        kept.append(op)
    for op in kept:
        op.inputs = [rewire.get(i, i) for i in op.inputs]
    graph.operators = kept
    _pool_pad_symmetric(model)
    _fold_same_pads(model)
    _drop_unused_tensors(model)
    if not model.signatureDefs:
        sig = fb.SignatureDefT()
        sig.signatureKey = SIGNATURE
        sig.subgraphIndex = 0
        sig.inputs = [_tensor_map(fb, graph, i) for i in graph.inputs]
        sig.outputs = [_tensor_map(fb, graph, i) for i in graph.outputs]
        model.signatureDefs = [sig]
    flatbuffer_utils.write_model(model, str(dst))
    print(f"widened {len(rewire)} fp16 constants; {len(kept)} ops left", file=sys.stderr)


def _graph_maps(model: Any) -> tuple[dict[int, int], dict[int, list[Any]]]:
    """The main graph's builtin code per opcode index, and the ops reading each tensor."""
    from ai_edge_litert.tools import flatbuffer_utils

    kind = {
        i: flatbuffer_utils.get_builtin_code_from_operator_code(c)
        for i, c in enumerate(model.operatorCodes)
    }
    readers: dict[int, list[Any]] = {}
    for op in model.subgraphs[0].operators:
        for t in op.inputs:
            readers.setdefault(t, []).append(op)
    return kind, readers


def _pool_pad_symmetric(model: Any) -> None:
    """PADV2 with -65504 before a MAX_POOL_2D becomes an edge-repeating MIRROR_PAD.

    A max over a window holding the edge pixel is the same with the edge repeated as with
    -inf around it, but -65504 (fp16's lowest) would stretch the int8 range of that tensor to
    256 per step and erase the first layer's output.
    """
    from ai_edge_litert import schema_py_generated as fb

    graph = model.subgraphs[0]
    kind, readers = _graph_maps(model)
    for op in graph.operators:
        if kind[op.opcodeIndex] != fb.BuiltinOperator.PADV2:
            continue
        const = graph.tensors[op.inputs[2]]
        value = np.frombuffer(bytes(bytearray(model.buffers[const.buffer].data)), np.float32)
        pads = np.frombuffer(
            bytes(bytearray(model.buffers[graph.tensors[op.inputs[1]].buffer].data)), np.int32
        )
        after = readers.get(op.outputs[0], [])
        if (
            value.size == 1
            and value[0] <= -1e4
            and pads.max() <= 1
            and after
            and all(kind[r.opcodeIndex] == fb.BuiltinOperator.MAX_POOL_2D for r in after)
        ):
            op.opcodeIndex = _opcode(model, fb.BuiltinOperator.MIRROR_PAD, 2)
            op.inputs = op.inputs[:2]
            op.builtinOptionsType = fb.BuiltinOptions.MirrorPadOptions
            op.builtinOptions = fb.MirrorPadOptionsT()
            op.builtinOptions.mode = fb.MirrorPadMode.SYMMETRIC
            print("PADV2 -65504 before MAX_POOL_2D -> MIRROR_PAD SYMMETRIC", file=sys.stderr)


def _fold_same_pads(model: Any) -> None:
    """PAD 1 on each side + 3x3 stride-1 VALID CONV_2D is one CONV_2D with SAME padding.

    The same arithmetic, one op and one copy of the activation fewer; in int8 the explicit PAD
    would also stay a separate copy (XNNPACK folds a pad into the convolution only when it pads
    with 0, and int8 pads with the zero point).
    """
    from ai_edge_litert import schema_py_generated as fb

    graph = model.subgraphs[0]
    kind, readers = _graph_maps(model)
    drop = set()
    for op in graph.operators:
        if kind[op.opcodeIndex] != fb.BuiltinOperator.PAD:
            continue
        pads = np.frombuffer(
            bytes(bytearray(model.buffers[graph.tensors[op.inputs[1]].buffer].data)), np.int32
        )
        after = readers.get(op.outputs[0], [])
        if pads.tolist() != [0, 0, 1, 1, 1, 1, 0, 0] or len(after) != 1:
            continue
        conv = after[0]
        opt = conv.builtinOptions
        kernel = graph.tensors[conv.inputs[1]].shape
        if (
            kind[conv.opcodeIndex] != fb.BuiltinOperator.CONV_2D
            or conv.inputs[0] != op.outputs[0]
            or opt.padding != fb.Padding.VALID
            or (opt.strideH, opt.strideW) != (1, 1)
            or (opt.dilationHFactor, opt.dilationWFactor) != (1, 1)
            or list(kernel[1:3]) != [3, 3]
        ):
            continue
        conv.inputs = [op.inputs[0], *conv.inputs[1:]]
        opt.padding = fb.Padding.SAME
        drop.add(id(op))
    graph.operators = [op for op in graph.operators if id(op) not in drop]
    print(f"{len(drop)} PAD + VALID CONV_2D -> SAME CONV_2D", file=sys.stderr)


def _drop_unused_tensors(model: Any) -> None:
    """Remove tensors no op, input or output names (the interpreter would leave them empty)."""
    graph = model.subgraphs[0]
    used = set(graph.inputs) | set(graph.outputs)
    for op in graph.operators:
        used.update(i for i in op.inputs if i >= 0)
        used.update(op.outputs)
    order = sorted(used)
    new = {old: i for i, old in enumerate(order)}
    graph.tensors = [graph.tensors[i] for i in order]
    for op in graph.operators:
        op.inputs = [new[i] if i >= 0 else i for i in op.inputs]
        op.outputs = [new[i] for i in op.outputs]
    graph.inputs = [new[i] for i in graph.inputs]
    graph.outputs = [new[i] for i in graph.outputs]
    for sig in model.signatureDefs or []:
        for m in [*sig.inputs, *sig.outputs]:
            m.tensorIndex = new[m.tensorIndex]


def _tensor_map(fb: Any, graph: Any, index: int) -> Any:
    m = fb.TensorMapT()
    name = graph.tensors[index].name
    m.name = name.decode() if isinstance(name, bytes) else name
    m.tensorIndex = index
    return m


def _frames(path: Path, wanted: range | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out: list[np.ndarray] = []
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if wanted is None or i in wanted:
            out.append(frame)
        i += 1
    cap.release()
    if not out:
        raise SystemExit(f"no frames read from {path}")
    return out


def _tensor(image: np.ndarray) -> np.ndarray:
    img = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return ((img - MEAN) / STD)[None].astype(np.float32)


def _random_crop(image: np.ndarray, rng: random.Random) -> np.ndarray:
    h, w = image.shape[:2]
    side = rng.randint(SIZE // 2, min(h, w))  # at most 2x enlargement, like max_zoom
    cw = min(w, int(side * rng.uniform(0.8, 1.25)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - side)
    return image[y : y + side, x : x + cw]


def calibration_data(shared: Path, sample: Path, step: int, input_name: str) -> list[Any]:
    rng = random.Random(19)
    frames = _frames(sample)[::step] + _frames(shared / "media" / "vtest.mp4", CALIB_VTEST)[::step]
    samples = []
    for f in frames:
        samples.append({input_name: _tensor(f)})
        samples.append({input_name: _tensor(_random_crop(f, rng))})
    return samples


def int8_leaky_relu(src: Path, dst: Path) -> None:
    """DEQUANTIZE -> float LEAKY_RELU -> QUANTIZE becomes one int8 LEAKY_RELU (step 3)."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    graph = model.subgraphs[0]
    kind, consumers = _graph_maps(model)
    producer = {t: op for op in graph.operators for t in op.outputs}
    drop: set[int] = set()
    fused = 0
    for op in graph.operators:
        if kind[op.opcodeIndex] != fb.BuiltinOperator.LEAKY_RELU:
            continue
        dq = producer.get(op.inputs[0])
        qs = consumers.get(op.outputs[0], [])
        if (
            dq is None
            or kind[dq.opcodeIndex] != fb.BuiltinOperator.DEQUANTIZE
            or len(consumers[dq.outputs[0]]) != 1
            or not qs
            or any(kind[q.opcodeIndex] != fb.BuiltinOperator.QUANTIZE for q in qs)
            or op.outputs[0] in graph.outputs
        ):
            continue
        first, *rest = qs
        op.inputs = [dq.inputs[0]]
        op.outputs = [first.outputs[0]]
        for q in rest:  # another consumer wants other int8 parameters: requantize
            q.inputs = [first.outputs[0]]
        drop.update((id(dq), id(first)))
        fused += 1
    graph.operators = [op for op in graph.operators if id(op) not in drop]
    _opcode(model, fb.BuiltinOperator.LEAKY_RELU, 2)  # int8 kernels are version 2
    _drop_unused_tensors(model)
    flatbuffer_utils.write_model(model, str(dst))
    print(f"int8 LEAKY_RELU: {fused} fused", file=sys.stderr)


def int8_pool_pad(src: Path, dst: Path) -> int:
    """MIRROR_PAD (SYMMETRIC, at most one cell a side) before MAX_POOL_2D only becomes a PADV2
    of the int8 minimum (step 4); returns how many were rewritten."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    graph = model.subgraphs[0]
    kind, readers = _graph_maps(model)
    rewritten = 0
    for op in graph.operators:
        if kind[op.opcodeIndex] != fb.BuiltinOperator.MIRROR_PAD:
            continue
        source = graph.tensors[op.inputs[0]]
        pads = np.frombuffer(
            bytes(bytearray(model.buffers[graph.tensors[op.inputs[1]].buffer].data)), np.int32
        )
        after = readers.get(op.outputs[0], [])
        if (
            source.type != fb.TensorType.INT8
            or op.builtinOptions.mode != fb.MirrorPadMode.SYMMETRIC
            or pads.max() > 1
            or not after
            or any(kind[r.opcodeIndex] != fb.BuiltinOperator.MAX_POOL_2D for r in after)
        ):
            continue
        lowest = fb.BufferT()
        lowest.data = np.array([-128], np.int8).tobytes()
        model.buffers.append(lowest)
        const = fb.TensorT()
        const.shape, const.type, const.name = [1], fb.TensorType.INT8, b"pool_pad_int8_min"
        const.buffer = len(model.buffers) - 1
        const.quantization = source.quantization
        graph.tensors.append(const)
        op.opcodeIndex = _opcode(model, fb.BuiltinOperator.PADV2, 2)  # int8 kernels: v2
        op.inputs = [*list(op.inputs[:2]), len(graph.tensors) - 1]
        op.builtinOptionsType = fb.BuiltinOptions.PadV2Options
        op.builtinOptions = fb.PadV2OptionsT()
        rewritten += 1
    flatbuffer_utils.write_model(model, str(dst))
    print(f"int8 MIRROR_PAD before MAX_POOL_2D -> PADV2: {rewritten}", file=sys.stderr)
    return rewritten


def _opcode(model: Any, builtin: int, version: int) -> int:
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    for i, code in enumerate(model.operatorCodes):
        if flatbuffer_utils.get_builtin_code_from_operator_code(code) == builtin:
            code.version = max(code.version, version)
            return i
    code = fb.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=here.parent / "shared")
    p.add_argument("--sample", type=Path, default=here / "spyoncino" / "data" / "sample.mp4")
    p.add_argument("--out", type=Path, default=here / ".cache" / "coco_nanodet_m_416_int8.tflite")
    p.add_argument("--step", type=int, default=2, help="use every N-th calibration frame")
    args = p.parse_args(argv)

    from ai_edge_quantizer import qtyping, quantizer

    src = args.shared / "models" / "coco_nanodet_m_416_fp16.tflite"
    work = args.out.with_suffix(".fp32.tflite")
    widen_fp16(src, work)

    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(work)).get_signature_runner(SIGNATURE)
    (input_name,) = runner.get_input_details()
    data = calibration_data(args.shared, args.sample, args.step, input_name)
    print(f"calibrating on {len(data)} samples", file=sys.stderr)

    qt = quantizer.Quantizer(str(work))
    qt.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
    )
    calib = qt.calibrate({SIGNATURE: data}, num_threads=2)
    result = qt.quantize(calib)
    assert result.quantized_model is not None
    staged = args.out.with_suffix(".aeq.tflite")
    staged.write_bytes(bytes(result.quantized_model))
    int8_leaky_relu(staged, staged)
    int8_pool_pad(staged, args.out)
    staged.unlink()
    work.unlink()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
