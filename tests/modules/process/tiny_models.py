"""Tiny TFLite models with known outputs, built in-process for decoder tests.

The graphs are real flatbuffers run by the real LiteRT interpreter: a constant tensor holding
the values the test wants goes through one RESHAPE to the model output, so the output has
exactly the layout, dtype and quantization (scale, zero point) of a real export. The
``ssd_postprocess`` model runs the real ``TFLite_Detection_PostProcess`` custom op on constant
box encodings, scores and anchors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb
from flatbuffers import flexbuffers

_TYPES = {
    np.dtype(np.float32): fb.TensorType.FLOAT32,
    np.dtype(np.uint8): fb.TensorType.UINT8,
    np.dtype(np.int8): fb.TensorType.INT8,
    np.dtype(np.int32): fb.TensorType.INT32,
}


@dataclass
class Const:
    """A constant output: ``values`` as stored, with optional quantization."""

    values: np.ndarray
    name: str = "output"
    scale: float = 0.0
    zero_point: int = 0


class _Graph:
    def __init__(self) -> None:
        self.model = fb.ModelT()
        self.model.version = 3
        self.model.buffers = [fb.BufferT()]  # buffer 0 is the empty sentinel
        self.model.operatorCodes = []
        self.sub = fb.SubGraphT()
        self.sub.tensors, self.sub.operators = [], []
        self.sub.inputs, self.sub.outputs = [], []
        self.model.subgraphs = [self.sub]

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        data: np.ndarray | None = None,
        scale: float = 0.0,
        zero_point: int = 0,
    ) -> int:
        t = fb.TensorT()
        t.name = name
        t.shape = list(shape)
        t.type = _TYPES[np.dtype(dtype)]
        if data is not None:
            b = fb.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8).tolist()
            self.model.buffers.append(b)
            t.buffer = len(self.model.buffers) - 1
        else:
            self.model.buffers.append(fb.BufferT())
            t.buffer = len(self.model.buffers) - 1
        if scale:
            q = fb.QuantizationParametersT()
            q.scale = [float(scale)]
            q.zeroPoint = [int(zero_point)]
            t.quantization = q
        self.sub.tensors.append(t)
        return len(self.sub.tensors) - 1

    def opcode(self, builtin: int, custom: str | None = None) -> int:
        oc = fb.OperatorCodeT()
        oc.builtinCode = builtin
        oc.deprecatedBuiltinCode = min(builtin, 127)
        oc.version = 1
        if custom is not None:
            oc.customCode = custom
        self.model.operatorCodes.append(oc)
        return len(self.model.operatorCodes) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], **extra: object) -> None:
        o = fb.OperatorT()
        o.opcodeIndex = code
        o.inputs, o.outputs = inputs, outputs
        for k, v in extra.items():
            setattr(o, k, v)
        self.sub.operators.append(o)

    def save(self, path: Path) -> Path:
        b = flatbuffers.Builder(1024)
        b.Finish(self.model.Pack(b), file_identifier=b"TFL3")
        path.write_bytes(bytes(b.Output()))
        return path


def _image_input(g: _Graph, size: tuple[int, int], quantized: bool) -> int:
    h, w = size
    if quantized:
        return g.tensor("images", (1, h, w, 3), np.dtype(np.uint8), scale=1 / 255, zero_point=0)
    return g.tensor("images", (1, h, w, 3), np.dtype(np.float32))


def constant_model(
    path: Path, outputs: list[Const], *, size: tuple[int, int] = (64, 64), quantized: bool = False
) -> Path:
    """A model with an image input whose outputs are ``outputs``, each through a RESHAPE."""
    g = _Graph()
    inp = _image_input(g, size, quantized)
    g.sub.inputs = [inp]
    reshape = g.opcode(fb.BuiltinOperator.RESHAPE)
    for c in outputs:
        dtype = c.values.dtype
        src = g.tensor(c.name + "_const", c.values.shape, dtype, c.values, c.scale, c.zero_point)
        shape = np.asarray(c.values.shape, np.int32)
        shp = g.tensor(c.name + "_shape", shape.shape, np.dtype(np.int32), shape)
        out = g.tensor(c.name, c.values.shape, dtype, None, c.scale, c.zero_point)
        g.op(reshape, [src, shp], [out])
        g.sub.outputs.append(out)
    return g.save(path)


def postprocess_model(
    path: Path,
    encodings: np.ndarray,  # (N, 4) ty, tx, th, tw
    scores: np.ndarray,  # (N, C + 1), column 0 background, already sigmoid
    anchors: np.ndarray,  # (N, 4) yc, xc, h, w normalised
    *,
    size: tuple[int, int] = (64, 64),
    max_detections: int = 10,
    score_threshold: float = 0.3,
    iou_threshold: float = 0.5,
) -> Path:
    """A model ending in the real ``TFLite_Detection_PostProcess`` op."""
    _n, c1 = scores.shape
    g = _Graph()
    inp = _image_input(g, size, quantized=False)
    g.sub.inputs = [inp]
    reshape = g.opcode(fb.BuiltinOperator.RESHAPE)
    post = g.opcode(fb.BuiltinOperator.CUSTOM, "TFLite_Detection_PostProcess")
    feeds = []
    for name, arr in (("box_encodings", encodings[None]), ("class_predictions", scores[None])):
        arr = arr.astype(np.float32)
        src = g.tensor(name + "_const", arr.shape, np.dtype(np.float32), arr)
        shape = np.asarray(arr.shape, np.int32)
        shp = g.tensor(name + "_shape", shape.shape, np.dtype(np.int32), shape)
        out = g.tensor(name, arr.shape, np.dtype(np.float32))
        g.op(reshape, [src, shp], [out])
        feeds.append(out)
    anchor_t = g.tensor("anchors", anchors.shape, np.dtype(np.float32), anchors.astype(np.float32))
    outs = [
        g.tensor("TFLite_Detection_PostProcess", (1, max_detections, 4), np.dtype(np.float32)),
        g.tensor("TFLite_Detection_PostProcess:1", (1, max_detections), np.dtype(np.float32)),
        g.tensor("TFLite_Detection_PostProcess:2", (1, max_detections), np.dtype(np.float32)),
        g.tensor("TFLite_Detection_PostProcess:3", (1,), np.dtype(np.float32)),
    ]
    fbb = flexbuffers.Builder()
    with fbb.Map():
        fbb.Int("max_detections", max_detections)
        fbb.Int("max_classes_per_detection", 1)
        fbb.Int("detections_per_class", 100)
        fbb.Bool("use_regular_nms", False)
        fbb.Float("nms_score_threshold", score_threshold)
        fbb.Float("nms_iou_threshold", iou_threshold)
        fbb.Int("num_classes", c1 - 1)
        fbb.Float("y_scale", 10.0)
        fbb.Float("x_scale", 10.0)
        fbb.Float("h_scale", 5.0)
        fbb.Float("w_scale", 5.0)
    custom = list(fbb.Finish())
    g.op(post, [feeds[0], feeds[1], anchor_t], outs, customOptions=custom)
    g.sub.outputs = outs
    return g.save(path)
