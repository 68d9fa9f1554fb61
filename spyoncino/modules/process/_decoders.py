"""Pre-processing, output decoders and NMS for the detector module (private).

One ``Model`` ties a loaded backend to its input preparation (crop, one resize, colour order,
normalisation baked into a 256-entry lookup table, quantization) and to the decoder of its
output format. Decoders threshold in the tensor's own (possibly quantized) domain and
dequantize only the candidates, so post-processing stays a small fraction of ``invoke()``.

Formats:

* ``yolov8``: Ultralytics YOLOv8 / YOLO11 export, one output ``[1, 4 + C, N]``: centre x, y,
  width, height (input pixels, or normalised in TFLite exports), then C class scores.
* ``yolov5``: one output ``[1, N, 5 + C]``: x, y, w, h, objectness, C class scores.
* ``ssd``: TF Object Detection API SSD without its post-processing: box encodings
  ``[1, N, (1,) 4]`` (ty, tx, th, tw) against the standard 6-layer anchor grid, class logits
  ``[1, N, C]`` (sigmoid, column 0 is the background).
* ``ssd_postprocess``: models ending in ``TFLite_Detection_PostProcess`` (or a TF OD API
  graph with its post-processing): boxes (normalised y0, x0, y1, x1), classes, scores, count.
* ``nanodet``: NanoDet, per stride 8/16/32 class scores ``[N, C]`` and side distances
  ``[N, 4 * (reg_max + 1)]`` (softmax over bins); TFLite exports transpose to ``[C, N]``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from spyoncino.modules.process._backends import Backend, TensorInfo
from spyoncino.schemas.frames import Frame

Format = Literal["auto", "yolov8", "yolov5", "ssd", "ssd_postprocess", "nanodet"]
Resize = Literal["auto", "letterbox", "stretch"]
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: labels a label file may start with to stand for the background class
BACKGROUND = frozenset({"???", "background", "__background__", "bg", "none"})
LETTERBOX_FILL = 114  # Ultralytics' grey
NANODET_REG_MAX = 10
NANODET_STRIDES = (8, 16, 32)
MAX_CANDIDATES = 300  # best-scoring boxes kept before NMS


class DecoderError(Exception):
    """The model's tensors do not fit the format or the labels; the message says how."""


@dataclass(frozen=True, slots=True)
class Defaults:
    """How a format's models usually want their input."""

    rgb: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Literal["letterbox", "stretch"]


FORMAT_DEFAULTS: dict[str, Defaults] = {
    "yolov8": Defaults(True, (0.0, 0.0, 0.0), (255.0, 255.0, 255.0), "letterbox"),
    "yolov5": Defaults(True, (0.0, 0.0, 0.0), (255.0, 255.0, 255.0), "letterbox"),
    "ssd": Defaults(True, (127.5, 127.5, 127.5), (127.5, 127.5, 127.5), "stretch"),
    "ssd_postprocess": Defaults(True, (127.5, 127.5, 127.5), (127.5, 127.5, 127.5), "stretch"),
    # mean/std in the model's own channel order (BGR)
    "nanodet": Defaults(False, (103.53, 116.28, 123.675), (57.375, 57.12, 58.395), "stretch"),
}


# -- labels ------------------------------------------------------------------------------------
def read_labels(path: Path) -> list[str]:
    """One label a line; ``N label`` or ``N: label`` lines (label maps) are accepted too."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text:
            continue
        head, _, rest = text.partition(" ")
        if head.rstrip(":").isdigit() and rest.strip():
            text = rest.strip()
        out.append(text)
    return out


def label_offset(labels: Sequence[str], classes: int | None) -> int:
    """1 when the label list starts with a background entry the decoder does not emit."""
    has_bg = bool(labels) and labels[0].strip().lower() in BACKGROUND
    if classes is None:
        return 1 if has_bg else 0
    if len(labels) == classes:
        return 0
    if has_bg and len(labels) == classes + 1:
        return 1
    raise DecoderError(
        f"the model has {classes} classes but the label file has {len(labels)} lines"
        + (" (a leading background line such as '???' may be added)" if not has_bg else "")
    )


# -- pre-processing ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Transform:
    """model pixel = (frame pixel - origin) * scale + pad."""

    x0: int
    y0: int
    sx: float
    sy: float
    px: float
    py: float

    def to_frame(self, boxes: FloatArray) -> FloatArray:
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] - self.px) / self.sx + self.x0
        out[:, 1::2] = (boxes[:, 1::2] - self.py) / self.sy + self.y0
        return out


class Preprocessor:
    """Crop, one resize, colour order and normalisation through a lookup table."""

    def __init__(
        self,
        info: TensorInfo,
        *,
        rgb: bool,
        mean: Sequence[float],
        std: Sequence[float],
        resize: Literal["letterbox", "stretch"],
    ) -> None:
        shape = info.shape
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise DecoderError(
                f"expected an image input [1, H, W, 3] or [1, 3, H, W], got {list(shape)}"
            )
        self.nchw = shape[1] == 3 and shape[3] != 3
        self.height, self.width = (shape[2], shape[3]) if self.nchw else (shape[1], shape[2])
        if self.height <= 0 or self.width <= 0:
            raise DecoderError(f"the input size is dynamic ({list(shape)}): set input_size")
        self.rgb = rgb
        self.resize = resize
        self._buffers: dict[str, npt.NDArray[Any]] = {}
        self.dtype = np.dtype(info.dtype)
        # One 256-entry table per channel does normalisation and quantization in one pass.
        v = np.arange(256, dtype=np.float64)
        cols = [(v - mean[c]) / std[c] for c in range(3)]
        lut = np.stack(cols, axis=1)  # (256, 3)
        self.lut: npt.NDArray[Any] | None
        self.gain = np.float32(1.0)
        self.bias = np.float32(0.0)
        if info.quantized:
            info_min, info_max = np.iinfo(self.dtype).min, np.iinfo(self.dtype).max
            q = np.clip(np.round(lut / info.scale + info.zero_point), info_min, info_max)
            self.lut = q.astype(self.dtype).reshape(256, 1, 3)
            identity = np.repeat(np.arange(256)[:, None], 3, 1)
            if self.dtype == np.uint8 and np.abs(self.lut[:, 0, :] - identity).max() <= 1:
                # the quantization undoes the normalisation (to one step): feed raw pixels
                self.lut = None
            elif self.dtype == np.int8:
                # OpenCV's LUT writes bytes a third quicker than int8 (0.32 against 0.49 ms
                # at 416x416x3): look the int8 values up as their bit patterns, the tensor
                # is then a view of those bytes
                self.lut = self.lut.view(np.uint8)
        elif self.dtype.kind in "iu":
            self.lut = None  # raw pixels (e.g. TF OD API graphs taking uint8)
        elif len(set(mean)) == 1 and len(set(std)) == 1:
            # the same for every channel: a scalar multiply-add beats a float lookup table
            self.lut = None
            self.gain = np.float32(1.0 / std[0])
            self.bias = np.float32(-mean[0] / std[0])
        else:
            self.lut = lut.astype(np.float32).reshape(256, 1, 3)

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def __call__(
        self, source: npt.NDArray[np.uint8] | Frame, region: tuple[int, int, int, int]
    ) -> tuple[npt.NDArray[Any], Transform]:
        """The model's input tensor for ``region`` of ``source`` (a BGR image, or a frame,
        whose crop is then converted from its YUV planes at the model's size where it can).

        The tensor is a buffer of this preprocessor, overwritten by the next call: hand it to
        the backend (which copies it) before calling again. Reusing it keeps an inference
        from allocating half-megabyte arrays, each a fresh mapping above the mmap threshold.
        """
        resize = source.resizer if isinstance(source, Frame) else None
        if resize is not None:
            # the chroma planes are at half resolution: crop on even pixels
            x1, y1, x2, y2 = region
            region = (x1 - x1 % 2, y1 - y1 % 2, x2 + x2 % 2, y2 + y2 % 2)
        image = None
        if resize is None:
            image = source.image if isinstance(source, Frame) else source
        x1, y1, x2, y2 = region
        cw, ch = x2 - x1, y2 - y1
        W, H = self.width, self.height
        if self.resize == "stretch":
            sx, sy = W / cw, H / ch
            interp = cv2.INTER_AREA if sx < 0.5 and sy < 0.5 else cv2.INTER_LINEAR
            nw, nh, px, py = W, H, 0, 0
        else:
            s = min(W / cw, H / ch)
            nw, nh = max(1, round(cw * s)), max(1, round(ch * s))
            if resize is not None:  # I420 wants an even size; one pixel less at most
                nw, nh = max(2, nw - nw % 2), max(2, nh - nh % 2)
            interp = cv2.INTER_AREA if s < 0.5 else cv2.INTER_LINEAR
            px, py = (W - nw) // 2, (H - nh) // 2
            sx, sy = nw / cw, nh / ch
        img: npt.NDArray[Any]
        if resize is not None:
            img = resize(region, (nw, nh), self.rgb, interp, self._buffer("pixels", nh, nw))
        else:
            assert image is not None
            img = cv2.resize(
                image[y1:y2, x1:x2],
                (nw, nh),
                dst=self._buffer("resized", nh, nw),
                interpolation=interp,
            )
            if self.rgb:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=self._buffer("pixels", nh, nw))
        if (nw, nh) != (W, H):
            canvas = self._buffer("canvas", H, W)
            canvas[:] = LETTERBOX_FILL
            canvas[py : py + nh, px : px + nw] = img
            img = canvas
        arr: npt.NDArray[Any]
        if self.lut is not None:
            out = self._buffer("tensor", H, W, self.lut.dtype)
            arr = cv2.LUT(img, self.lut, dst=out)
            if self.lut.dtype != self.dtype:  # int8 looked up as bytes (same size)
                arr = arr.view(self.dtype)
        elif self.dtype.kind == "f":
            arr = img.astype(np.float32)
            arr *= self.gain
            arr += self.bias
        else:
            arr = img
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        if self.nchw:
            arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
        return arr[None], Transform(x1, y1, sx, sy, float(px), float(py))

    def _buffer(self, name: str, h: int, w: int, dtype: Any = np.uint8) -> npt.NDArray[Any]:
        """A reused (h, w, 3) array, one per stage of the pipeline above."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape[:2] != (h, w) or buf.dtype != dtype:
            buf = np.empty((h, w, 3), dtype=dtype)
            self._buffers[name] = buf
        return buf


# -- NMS ---------------------------------------------------------------------------------------
def nms(
    boxes: FloatArray, scores: FloatArray, classes: IntArray, iou: float, max_det: int = 100
) -> IntArray:
    """Greedy per-class non-maximum suppression; returns kept indices, best first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    # shift each class to its own region so one pass never suppresses across classes
    shift = (classes.astype(np.float32) * (float(np.abs(boxes).max()) + 1.0))[:, None]
    b = boxes + shift
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = np.maximum(0.0, x2 - x1) * np.maximum(0.0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def _top(scores: FloatArray, idx: IntArray, k: int = MAX_CANDIDATES) -> IntArray:
    if len(idx) <= k:
        return idx
    part = np.argpartition(-scores, k)[:k]
    return idx[part]


def _quantized_threshold(info: TensorInfo, value: float) -> float:
    """``value`` in the tensor's stored domain (comparisons stay monotonic: scale > 0)."""
    if info.quantized:
        return value / info.scale + info.zero_point
    return value


# -- decoders ----------------------------------------------------------------------------------
Decoded = tuple[FloatArray, FloatArray, IntArray]  # xyxy in model pixels, scores, class index


class Decoder(Protocol):
    #: foreground classes the model emits, None when the shapes do not tell (ssd_postprocess)
    classes: int | None
    #: whether the decoder's output still needs NMS
    needs_nms: bool

    def __call__(self, outputs: list[npt.NDArray[Any]], min_score: float) -> Decoded: ...


def _empty() -> Decoded:
    return (
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.float32),
        np.zeros(0, np.int64),
    )


def _sigmoid(x: FloatArray) -> FloatArray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _xywh_to_xyxy(b: FloatArray) -> FloatArray:
    out = np.empty_like(b)
    out[:, 0] = b[:, 0] - b[:, 2] / 2
    out[:, 1] = b[:, 1] - b[:, 3] / 2
    out[:, 2] = b[:, 0] + b[:, 2] / 2
    out[:, 3] = b[:, 1] + b[:, 3] / 2
    return out


class YoloV8Decoder:
    """``[1, 4 + C, N]``: cx, cy, w, h, then class scores (already sigmoid)."""

    needs_nms = True

    def __init__(self, outputs: list[TensorInfo], size: tuple[int, int]) -> None:
        if len(outputs) != 1 or len(outputs[0].shape) != 3 or outputs[0].shape[1] < 5:
            raise DecoderError(
                "format 'yolov8' expects one output [1, 4 + classes, N], the model has "
                + _shapes(outputs)
            )
        self.info = outputs[0]
        self.classes: int | None = self.info.shape[1] - 4
        self.size = size

    def __call__(self, outputs: list[npt.NDArray[Any]], min_score: float) -> Decoded:
        raw = outputs[0][0]  # (4 + C, N)
        cls = raw[4:]
        best = cls.argmax(axis=0)
        best_raw = np.take_along_axis(cls, best[None], axis=0)[0]
        idx = np.flatnonzero(best_raw >= _quantized_threshold(self.info, min_score))
        if idx.size == 0:
            return _empty()
        scores = self.info.dequantize(best_raw[idx])
        keep = scores >= min_score
        idx, scores = idx[keep], scores[keep]
        top = _top(scores, np.arange(len(idx)))
        idx, scores = idx[top], scores[top]
        boxes = self.info.dequantize(raw[:4, idx]).T.copy()
        _to_pixels(boxes, self.size)
        return _xywh_to_xyxy(boxes), scores, best[idx].astype(np.int64)


class YoloV5Decoder:
    """``[1, N, 5 + C]``: cx, cy, w, h, objectness, class scores; score = obj * class."""

    needs_nms = True

    def __init__(self, outputs: list[TensorInfo], size: tuple[int, int]) -> None:
        if len(outputs) != 1 or len(outputs[0].shape) != 3 or outputs[0].shape[2] < 6:
            raise DecoderError(
                "format 'yolov5' expects one output [1, N, 5 + classes], the model has "
                + _shapes(outputs)
            )
        self.info = outputs[0]
        self.classes: int | None = self.info.shape[2] - 5
        self.size = size

    def __call__(self, outputs: list[npt.NDArray[Any]], min_score: float) -> Decoded:
        raw = outputs[0][0]  # (N, 5 + C)
        obj_raw = raw[:, 4]
        idx = np.flatnonzero(obj_raw >= _quantized_threshold(self.info, min_score))
        if idx.size == 0:
            return _empty()
        rows = self.info.dequantize(raw[idx])
        cls = rows[:, 5:]
        best = cls.argmax(axis=1)
        scores = rows[:, 4] * cls[np.arange(len(rows)), best]
        keep = np.flatnonzero(scores >= min_score)
        keep = _top(scores[keep], keep)
        boxes = rows[keep, :4].copy()
        _to_pixels(boxes, self.size)
        return _xywh_to_xyxy(boxes), scores[keep].astype(np.float32), best[keep].astype(np.int64)


def _to_pixels(xywh: FloatArray, size: tuple[int, int]) -> None:
    """Ultralytics TFLite exports give normalised boxes, ONNX ones pixels: tell by range."""
    if xywh.size and float(np.abs(xywh).max()) <= 2.0:
        h, w = size
        xywh[:, 0::2] *= w
        xywh[:, 1::2] *= h


def ssd_anchors(height: int, width: int, num_layers: int = 6) -> FloatArray:
    """The TF OD API SSD anchor grid (ycenter, xcenter, h, w), normalised, in output order.

    min scale 0.2, max 0.95, aspect ratios 1, 2, 1/2, 3, 1/3 plus one interpolated scale;
    the lowest layer uses (0.1, 1), (0.2, 2), (0.2, 1/2) only; feature maps at strides
    16 ... 512 (19, 10, 5, 3, 2, 1 cells for 300 px).
    """
    min_scale, max_scale = 0.2, 0.95
    scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)]
    scales.append(1.0)
    ratios = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
    out = []
    for layer in range(num_layers):
        stride = 2 ** (layer + 4)
        fh, fw = math.ceil(height / stride), math.ceil(width / stride)
        if layer == 0:
            specs = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            specs = [(scales[layer], r) for r in ratios]
            specs.append((math.sqrt(scales[layer] * scales[layer + 1]), 1.0))
        sizes = np.array([(s / math.sqrt(r), s * math.sqrt(r)) for s, r in specs], np.float32)
        ys = (np.arange(fh, dtype=np.float32) + 0.5) / fh
        xs = (np.arange(fw, dtype=np.float32) + 0.5) / fw
        cy, cx = np.meshgrid(ys, xs, indexing="ij")
        centres = np.stack([cy.ravel(), cx.ravel()], axis=1)  # (cells, 2)
        k = len(specs)
        grid = np.empty((centres.shape[0], k, 4), np.float32)
        grid[:, :, 0:2] = centres[:, None, :]
        grid[:, :, 2:4] = sizes[None, :, :]
        out.append(grid.reshape(-1, 4))
    return np.concatenate(out, axis=0)


class SsdDecoder:
    """Raw SSD heads: box encodings against the anchor grid and sigmoid class logits."""

    needs_nms = True
    box_scale = (10.0, 10.0, 5.0, 5.0)

    def __init__(self, outputs: list[TensorInfo], size: tuple[int, int]) -> None:
        boxes = [o for o in outputs if o.shape[-1] == 4 and len(o.shape) in (3, 4)]
        others = [o for o in outputs if o not in boxes]
        if len(outputs) != 2 or len(boxes) != 1 or len(others) != 1 or len(others[0].shape) != 3:
            raise DecoderError(
                "format 'ssd' expects box encodings [1, N, 4] and class scores [1, N, C], "
                "the model has " + _shapes(outputs)
            )
        self.box_info, self.cls_info = boxes[0], others[0]
        self.box_pos, self.cls_pos = outputs.index(boxes[0]), outputs.index(others[0])
        n = self.box_info.shape[1]
        self.anchors = ssd_anchors(*size)
        if self.anchors.shape[0] != n or self.cls_info.shape[1] != n:
            raise DecoderError(
                f"format 'ssd' builds {self.anchors.shape[0]} standard anchors for a "
                f"{size[1]}x{size[0]} input but the model has {n} boxes; export the model "
                "with its post-processing and use format 'ssd_postprocess'"
            )
        self.classes: int | None = self.cls_info.shape[2] - 1  # column 0 is the background
        self.size = size

    def __call__(self, outputs: list[npt.NDArray[Any]], min_score: float) -> Decoded:
        logits = outputs[self.cls_pos][0][:, 1:]  # (N, C - 1)
        best = logits.argmax(axis=1)
        best_raw = logits[np.arange(len(logits)), best]
        p = min(max(min_score, 1e-6), 1 - 1e-6)
        logit_thr = math.log(p / (1 - p))
        idx = np.flatnonzero(best_raw >= _quantized_threshold(self.cls_info, logit_thr))
        if idx.size == 0:
            return _empty()
        scores = _sigmoid(self.cls_info.dequantize(best_raw[idx]))
        top = _top(scores, np.arange(len(idx)))
        idx, scores = idx[top], scores[top]
        enc = self.box_info.dequantize(outputs[self.box_pos].reshape(-1, 4)[idx])
        a = self.anchors[idx]
        ys, xs, hs, ws = self.box_scale
        cy = enc[:, 0] / ys * a[:, 2] + a[:, 0]
        cx = enc[:, 1] / xs * a[:, 3] + a[:, 1]
        h = np.exp(enc[:, 2] / hs) * a[:, 2]
        w = np.exp(enc[:, 3] / ws) * a[:, 3]
        H, W = self.size
        boxes = np.stack(
            [(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H], 1
        )
        return boxes.astype(np.float32), scores, best[idx].astype(np.int64)


class SsdPostprocessDecoder:
    """Already decoded and suppressed: boxes (y0, x0, y1, x1 normalised), classes, scores, count."""

    needs_nms = False

    def __init__(self, outputs: list[TensorInfo], size: tuple[int, int]) -> None:
        box = [i for i, o in enumerate(outputs) if len(o.shape) == 3 and o.shape[-1] in (4, -1)]
        count = [i for i, o in enumerate(outputs) if len(o.shape) == 1]
        if len(outputs) != 4 or len(box) != 1 or len(count) != 1:
            raise DecoderError(
                "format 'ssd_postprocess' expects boxes [1, K, 4], classes [1, K], scores "
                "[1, K] and count [1], the model has " + _shapes(outputs)
            )
        self.box, self.count = box[0], count[0]
        rest = [i for i in range(4) if i not in (self.box, self.count)]
        names = [outputs[i].name.lower() for i in rest]
        self.scores_pos: int | None = None
        self.classes_pos: int | None = None
        for i, name in zip(rest, names, strict=True):
            if "score" in name:
                self.scores_pos = i
            elif "class" in name:
                self.classes_pos = i
        self.rest = rest
        # TF OD API graphs number classes from 1; the TFLite op from 0
        self.one_based = any("detection_classes" in o.name for o in outputs)
        self.classes: int | None = None
        self.size = size

    def _roles(self, outputs: list[npt.NDArray[Any]], n: int) -> tuple[int, int]:
        """(scores, classes) positions: by name, else by value (classes are whole numbers)."""
        if self.scores_pos is not None and self.classes_pos is not None:
            return self.scores_pos, self.classes_pos
        a, b = self.rest
        va, vb = outputs[a].ravel()[:n], outputs[b].ravel()[:n]  # past count: garbage
        a_int = bool(np.all(va == np.round(va)))
        b_int = bool(np.all(vb == np.round(vb)))
        if (va.size and va.max() > 1.0) or (a_int and not b_int):
            return b, a
        if (vb.size and vb.max() > 1.0) or (b_int and not a_int):
            return a, b
        return b, a  # TF1 order: boxes, classes, scores, count

    def __call__(self, outputs: list[npt.NDArray[Any]], min_score: float) -> Decoded:
        n = int(np.asarray(outputs[self.count]).ravel()[0])
        scores_pos, classes_pos = self._roles(outputs, n)
        scores = np.asarray(outputs[scores_pos], np.float32).reshape(-1)[:n]
        classes = np.asarray(outputs[classes_pos]).reshape(-1)[:n].astype(np.int64)
        boxes = np.asarray(outputs[self.box], np.float32).reshape(-1, 4)[:n]
        if self.one_based:
            classes = classes - 1
        keep = scores >= min_score
        H, W = self.size
        b = boxes[keep]
        xyxy = np.stack([b[:, 1] * W, b[:, 0] * H, b[:, 3] * W, b[:, 2] * H], axis=1)
        return xyxy.astype(np.float32), scores[keep], classes[keep]


class NanoDetDecoder:
    """Per stride: class scores (sigmoid already) and 4 x (reg_max + 1) distance bins."""

    needs_nms = True

    def __init__(self, outputs: list[TensorInfo], size: tuple[int, int]) -> None:
        H, W = size
        bins = 4 * (NANODET_REG_MAX + 1)
        self.levels: list[tuple[int, int, int, bool, int, bool, int, int]] = []
        classes: set[int] = set()
        for stride in NANODET_STRIDES:
            fh, fw = math.ceil(H / stride), math.ceil(W / stride)
            n = fh * fw
            found: dict[str, tuple[int, bool]] = {}
            for i, o in enumerate(outputs):
                s = o.shape
                if len(s) != 3 or n not in (s[1], s[2]):
                    continue
                transposed = s[2] == n and s[1] != n  # [1, C, N]
                channels = s[1] if transposed else s[2]
                found["dist" if channels == bins else "cls"] = (i, transposed)
                if channels != bins:
                    classes.add(channels)
            if set(found) != {"dist", "cls"}:
                raise DecoderError(
                    f"format 'nanodet' expects, for stride {stride}, scores [1, {n}, C] and "
                    f"distances [1, {n}, {bins}] (or transposed); the model has " + _shapes(outputs)
                )
            ci, ct = found["cls"]
            di, dt = found["dist"]
            self.levels.append((stride, ci, di, ct, n, dt, fh, fw))
        if len(classes) != 1 or len(outputs) != 2 * len(NANODET_STRIDES):
            raise DecoderError("format 'nanodet': the outputs do not form 3 strides of pairs")
        self.classes: int | None = classes.pop()
        self.infos = outputs
        self.proj = np.arange(NANODET_REG_MAX + 1, dtype=np.float32)

    def __call__(self, outputs: list[npt.NDArray[Any]], min_score: float) -> Decoded:
        all_boxes, all_scores, all_cls = [], [], []
        for stride, ci, di, ct, _n, dt, _fh, fw in self.levels:
            info = self.infos[ci]
            cls = outputs[ci][0]
            cls = cls.T if ct else cls  # (N, C)
            # the best score of every cell first (a max is 25x cheaper than an argmax over
            # the transposed [C, N] heads: 9 against 250 us at stride 8), the class only for
            # the few cells over the threshold
            best_raw = cls.max(axis=1)
            idx = np.flatnonzero(best_raw >= _quantized_threshold(info, min_score))
            if idx.size == 0:
                continue
            best = cls[idx].argmax(axis=1)
            scores = info.dequantize(best_raw[idx])
            dist_raw = outputs[di][0]
            rows = dist_raw[:, idx].T if dt else dist_raw[idx]
            d = self.infos[di].dequantize(rows).reshape(-1, 4, NANODET_REG_MAX + 1)
            d = d - d.max(axis=2, keepdims=True)
            e = np.exp(d)
            # the expected bin: a multiply-sum, not a matmul, which would wake OpenBLAS's
            # threads (they spin after every call: 1-2 % of a busy camera's CPU)
            dist = (e * self.proj).sum(axis=2) / e.sum(axis=2) * stride  # (K, 4): l t r b
            cx = (idx % fw).astype(np.float32) * stride
            cy = (idx // fw).astype(np.float32) * stride
            boxes = np.stack(
                [cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1
            )
            all_boxes.append(boxes.astype(np.float32))
            all_scores.append(scores)
            all_cls.append(best.astype(np.int64))
        if not all_boxes:
            return _empty()
        boxes, scores, classes = (
            np.concatenate(all_boxes),
            np.concatenate(all_scores),
            np.concatenate(all_cls),
        )
        top = _top(scores, np.arange(len(scores)))
        return boxes[top], scores[top], classes[top]


DECODERS: dict[str, Any] = {
    "yolov8": YoloV8Decoder,
    "yolov5": YoloV5Decoder,
    "ssd": SsdDecoder,
    "ssd_postprocess": SsdPostprocessDecoder,
    "nanodet": NanoDetDecoder,
}


def _shapes(outputs: Sequence[TensorInfo]) -> str:
    return ", ".join(f"{o.name} {list(o.shape)}" for o in outputs) or "no outputs"


def detect_format(outputs: Sequence[TensorInfo]) -> str:
    """Tell the output format from the tensor shapes (``format: auto``)."""
    shapes = [o.shape for o in outputs]
    if len(shapes) == 1 and len(shapes[0]) == 3:
        a, b = shapes[0][1], shapes[0][2]
        if a > 0 and b > 0:
            return "yolov8" if a < b else "yolov5"
    if len(shapes) == 2 and any(s[-1] == 4 for s in shapes):
        return "ssd"
    if len(shapes) == 4 and any(len(s) == 1 for s in shapes):
        return "ssd_postprocess"
    if len(shapes) == 2 * len(NANODET_STRIDES) and all(len(s) == 3 for s in shapes):
        return "nanodet"
    raise DecoderError(
        "cannot tell the output format from the tensors (" + _shapes(outputs) + "): set "
        "format to one of yolov8, yolov5, ssd, ssd_postprocess, nanodet"
    )


# -- the model ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RawDetection:
    label: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True, slots=True)
class RunResult:
    detections: list[RawDetection]
    pre_ms: float
    invoke_ms: float
    post_ms: float

    @property
    def total_ms(self) -> float:
        return self.pre_ms + self.invoke_ms + self.post_ms


class Model:
    """A loaded backend with its pre-processing, decoder and labels."""

    def __init__(
        self,
        backend: Backend,
        labels: Sequence[str],
        *,
        fmt: Format = "auto",
        resize: Resize = "auto",
        rgb: bool | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        nms_iou: float = 0.45,
        max_detections: int = 100,
    ) -> None:
        self.backend = backend
        self.format = detect_format(backend.outputs) if fmt == "auto" else fmt
        d = FORMAT_DEFAULTS[self.format]
        self.pre = Preprocessor(
            backend.inputs[0],
            rgb=d.rgb if rgb is None else rgb,
            mean=d.mean if mean is None else mean,
            std=d.std if std is None else std,
            resize=d.resize if resize == "auto" else resize,
        )
        self.decoder: Decoder = DECODERS[self.format](backend.outputs, self.pre.size)
        self.labels = [label.strip().lower() for label in labels]
        self.offset = label_offset(self.labels, self.decoder.classes)
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self._lock = threading.Lock()

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.pre.size

    @property
    def resize(self) -> str:
        return self.pre.resize

    def label_of(self, index: int) -> str | None:
        i = index + self.offset
        return self.labels[i] if 0 <= i < len(self.labels) else None

    def run(
        self,
        image: npt.NDArray[np.uint8] | Frame,
        region: tuple[int, int, int, int] | None = None,
        min_score: float = 0.3,
    ) -> RunResult:
        """Detect in ``region`` (x1, y1, x2, y2) of ``image`` (a BGR image or a frame);
        boxes in its pixels. Calls from several threads take turns (the preprocessor's
        buffers and the interpreter are one per model)."""
        h, w = image.colour_size if isinstance(image, Frame) else image.shape[:2]
        if region is None:
            region = (0, 0, w, h)
        with self._lock:
            t0 = time.perf_counter()
            tensor, tf = self.pre(image, region)
            t1 = time.perf_counter()
            outputs = self.backend.invoke(tensor)
            t2 = time.perf_counter()
        boxes, scores, classes = self.decoder(outputs, min_score)
        if self.decoder.needs_nms and len(boxes):
            keep = nms(boxes, scores, classes, self.nms_iou, self.max_detections)
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        frame_boxes = tf.to_frame(boxes) if len(boxes) else boxes
        dets = []
        for (x1, y1, x2, y2), s, c in zip(
            frame_boxes.tolist(), scores.tolist(), classes.tolist(), strict=True
        ):
            label = self.label_of(int(c))
            if label is None or label in BACKGROUND:
                continue
            x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
            y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            dets.append(RawDetection(label, float(min(max(s, 0.0), 1.0)), x1, y1, x2, y2))
        t3 = time.perf_counter()
        return RunResult(dets, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
