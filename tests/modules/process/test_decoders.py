"""Output decoders, pre-processing and NMS of the detector, on real interpreters.

YOLO and TFLite_Detection_PostProcess layouts are checked on tiny models built here with known
values (float and quantized); the SSD and NanoDet decoders on the real models in
``../shared/models`` (skipped when absent) and on the bundled default model.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from spyoncino.core.contracts import ModuleConfigError
from spyoncino.modules.process._backends import TensorInfo, open_backend
from spyoncino.modules.process._decoders import (
    DecoderError,
    Model,
    Preprocessor,
    detect_format,
    label_offset,
    nms,
    read_labels,
    ssd_anchors,
)
from spyoncino.modules.process.detector import Config, load_model
from spyoncino.schemas.frames import Box, Frame

from .tiny_models import Const, constant_model, postprocess_model

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"
MODELS = SHARED / "models"
VTEST = SHARED / "media" / "vtest.mp4"
needs_shared = pytest.mark.skipif(
    not (MODELS.is_dir() and VTEST.is_file()),
    reason="../shared/models and ../shared/media/vtest.mp4 are absent (real-model tests)",
)

IMAGE_W, IMAGE_H = 640, 480  # frame size the tiny-model tests map back to
INPUT = 320  # tiny YOLO model input: letterbox scale 0.5, 40 px bars top and bottom


def frame_at(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="bgr24")
    raise AssertionError(f"{path} has fewer than {index + 1} frames")


def blank() -> np.ndarray:
    return np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    return Box(x1=a[0], y1=a[1], x2=a[2], y2=a[3]).iou(Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]))


def box_of(d: object) -> tuple[int, int, int, int]:
    return tuple(round(getattr(d, k)) for k in ("x1", "y1", "x2", "y2"))  # type: ignore[return-value]


# -- YOLOv8 layout ------------------------------------------------------------------------------
# Rows: cx, cy, w, h in model-input pixels, then scores for classes person, car, dog.
YOLO_ROWS = [
    # cx, cy, w, h, person, car, dog
    (100, 120, 40, 60, 0.875, 0.0, 0.0),  # kept: best person
    (102, 122, 40, 60, 0.75, 0.0, 0.0),  # same place, lower score: suppressed by NMS
    (100, 120, 40, 60, 0.0, 0.0, 0.625),  # same place, other class: kept (per-class NMS)
    (200, 200, 32, 32, 0.125, 0.0, 0.0),  # below min score
    (250, 200, 20, 24, 0.0, 0.5, 0.0),  # kept: car
]
# expected frame boxes: x = (mx - 0) / 0.5, y = (my - 40) / 0.5
EXPECTED = {
    ("person", 0.875): (160, 100, 240, 220),
    ("dog", 0.625): (160, 100, 240, 220),
    ("car", 0.5): (480, 296, 520, 344),
}


def yolo_values(normalised: bool, anchors: int = 16) -> np.ndarray:
    out = np.zeros((1, 7, anchors), np.float32)
    for j, row in enumerate(YOLO_ROWS):
        v = np.asarray(row, np.float32)
        if normalised:
            v[:4] /= INPUT
        out[0, :, j] = v
    return out


def check_yolo(model: Model) -> None:
    res = model.run(blank(), min_score=0.3)
    got = {(d.label, round(d.score, 3)): box_of(d) for d in res.detections}
    assert got == EXPECTED
    assert [d.label for d in res.detections] == ["person", "dog", "car"]  # best first


@pytest.mark.parametrize("normalised", [True, False], ids=["normalised", "pixels"])
def test_yolov8_float_exact_boxes(tmp_path: Path, normalised: bool) -> None:
    path = constant_model(
        tmp_path / "y8.tflite", [Const(yolo_values(normalised))], size=(INPUT, INPUT)
    )
    backend = open_backend(path)
    assert detect_format(backend.outputs) == "yolov8"
    model = Model(backend, ["person", "car", "dog"])
    assert model.format == "yolov8"
    assert model.resize == "letterbox"
    check_yolo(model)


def test_yolov8_int8_dequantizes_through_scale_and_zero_point(tmp_path: Path) -> None:
    scale, zp = 1 / 256, -128  # every value above is a multiple of 1/256 once normalised
    real = yolo_values(normalised=True)
    q = np.clip(np.round(real / scale) + zp, -128, 127).astype(np.int8)
    path = constant_model(
        tmp_path / "y8q.tflite",
        [Const(q, scale=scale, zero_point=zp)],
        size=(INPUT, INPUT),
        quantized=True,
    )
    backend = open_backend(path)
    assert backend.outputs[0].quantized
    assert backend.inputs[0].dtype == np.uint8
    model = Model(backend, ["person", "car", "dog"])
    check_yolo(model)
    # the input was quantized with the input tensor's own parameters (scale 1/255, zp 0)
    img = np.full((8, 8, 3), 200, np.uint8)
    tensor, _ = model.pre(img, (0, 0, 8, 8))
    assert tensor.dtype == np.uint8
    assert int(tensor.max()) == 200


def test_an_int8_input_holds_each_channels_normalised_value_negative_ones_too() -> None:
    # NanoDet's normalisation into an int8 input (the bundled model's): pixel values below a
    # channel's mean become negative numbers, which the tensor must hold as such
    mean, std, scale, zp = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395), 0.0186, -14
    info = TensorInfo("in", (1, 4, 4, 3), np.int8, scale=scale, zero_point=zp)
    pre = Preprocessor(info, rgb=False, mean=mean, std=std, resize="stretch")
    img = np.zeros((4, 4, 3), np.uint8)
    img[:, :2] = (0, 100, 250)
    img[:, 2:] = (255, 7, 128)
    tensor, _ = pre(img, (0, 0, 4, 4))
    assert tensor.dtype == np.int8 and tensor.shape == (1, 4, 4, 3)
    for x, pixel in ((0, (0, 100, 250)), (3, (255, 7, 128))):
        want = [
            int(np.clip(np.round((pixel[c] - mean[c]) / std[c] / scale + zp), -128, 127))
            for c in range(3)
        ]
        assert tensor[0, 0, x].tolist() == want
    assert int(tensor.min()) < 0  # the test covers the negative values it means to


def test_yolov5_layout(tmp_path: Path) -> None:
    rows = np.zeros((1, 12, 8), np.float32)  # [1, N, 5 + C]
    for j, (cx, cy, w, h, p, c, d) in enumerate(YOLO_ROWS):
        obj = max(p, c, d)
        cls = [p / obj, c / obj, d / obj] if obj else [0, 0, 0]
        rows[0, j] = [cx, cy, w, h, obj, *cls]
    path = constant_model(tmp_path / "y5.tflite", [Const(rows)], size=(INPUT, INPUT))
    model = Model(open_backend(path), ["person", "car", "dog"])
    assert model.format == "yolov5"
    check_yolo(model)


def test_label_count_mismatch_is_refused(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "y8.tflite", [Const(yolo_values(True))], size=(INPUT, INPUT))
    with pytest.raises(DecoderError, match="3 classes but the label file has 4 lines"):
        Model(open_backend(path), ["person", "car", "dog", "cat"])
    # a leading background line is allowed
    assert Model(open_backend(path), ["???", "person", "car", "dog"]).offset == 1


def test_wrong_format_is_refused(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "y8.tflite", [Const(yolo_values(True))], size=(INPUT, INPUT))
    with pytest.raises(DecoderError, match="format 'ssd' expects"):
        Model(open_backend(path), ["person", "car", "dog"], fmt="ssd")
    with pytest.raises(DecoderError, match="format 'nanodet'"):
        Model(open_backend(path), ["person", "car", "dog"], fmt="nanodet")


# -- TFLite_Detection_PostProcess ---------------------------------------------------------------
def test_ssd_postprocess_real_custom_op(tmp_path: Path) -> None:
    anchors = np.array(
        [
            [0.5, 0.5, 0.5, 0.5],  # -> y 0.25..0.75, x 0.25..0.75
            [0.52, 0.5, 0.5, 0.5],  # overlaps the first, lower score: suppressed by the op
            [0.2, 0.8, 0.2, 0.1],  # -> y 0.1..0.3, x 0.75..0.85, class car
            [0.9, 0.1, 0.1, 0.1],  # background
        ],
        np.float32,
    )
    enc = np.zeros((4, 4), np.float32)
    enc[2] = [0.0, 0.0, 0.0, 0.0]
    scores = np.array(
        [[0.1, 0.9, 0.0], [0.1, 0.8, 0.0], [0.0, 0.1, 0.7], [0.9, 0.05, 0.05]], np.float32
    )
    path = postprocess_model(tmp_path / "pp.tflite", enc, scores, anchors, size=(64, 64))
    backend = open_backend(path)
    assert detect_format(backend.outputs) == "ssd_postprocess"
    for labels in (["person", "car"], ["???", "person", "car"]):
        model = Model(backend, labels)
        assert model.resize == "stretch"
        res = model.run(blank(), min_score=0.3)
        got = {(d.label, round(d.score, 3)): box_of(d) for d in res.detections}
        # stretch: x * 640, y * 480
        assert got == {("person", 0.9): (160, 120, 480, 360), ("car", 0.7): (480, 48, 544, 144)}


# -- pre-processing -----------------------------------------------------------------------------
def test_letterbox_maps_back_and_normalises() -> None:
    info = TensorInfo("in", (1, 320, 320, 3), np.float32)
    pre = Preprocessor(info, rgb=True, mean=(0, 0, 0), std=(255, 255, 255), resize="letterbox")
    img = np.zeros((480, 640, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    tensor, tf = pre(img, (0, 0, 640, 480))
    assert tensor.shape == (1, 320, 320, 3)
    assert tensor.dtype == np.float32
    assert (tf.sx, tf.sy, tf.px, tf.py) == (0.5, 0.5, 0.0, 40.0)
    assert tensor[0, 160, 160].tolist() == [0.0, 0.0, 1.0]  # RGB order, blue last
    assert tensor[0, 0, 0].tolist() == pytest.approx([114 / 255] * 3)  # letterbox bar
    back = tf.to_frame(np.array([[80.0, 90.0, 120.0, 150.0]], np.float32))
    assert back.tolist() == [[160.0, 100.0, 240.0, 220.0]]


def test_nchw_input_and_crop_offset() -> None:
    info = TensorInfo("in", (1, 3, 100, 100), np.float32)
    pre = Preprocessor(info, rgb=False, mean=(1, 2, 3), std=(1, 1, 1), resize="stretch")
    img = np.zeros((300, 400, 3), np.uint8)
    tensor, tf = pre(img, (100, 50, 300, 250))
    assert tensor.shape == (1, 3, 100, 100)
    assert tensor[0, :, 0, 0].tolist() == [-1.0, -2.0, -3.0]
    assert tf.to_frame(np.array([[0, 0, 100, 100]], np.float32)).tolist() == [[100, 50, 300, 250]]


def test_nms_is_per_class_and_greedy() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, classes, 0.45).tolist() == [0, 2, 3]
    assert nms(boxes, scores, np.zeros(4, np.int64), 0.45).tolist() == [0, 3]
    assert nms(boxes[:0], scores[:0], classes[:0], 0.5).tolist() == []


def test_detect_format_from_shapes() -> None:
    def t(*shape: int) -> TensorInfo:
        return TensorInfo("x", shape, np.float32)

    assert detect_format([t(1, 84, 2100)]) == "yolov8"
    assert detect_format([t(1, 25200, 85)]) == "yolov5"
    assert detect_format([t(1, 1917, 1, 4), t(1, 1917, 2)]) == "ssd"
    assert detect_format([t(1, 10, 4), t(1, 10), t(1, 10), t(1)]) == "ssd_postprocess"
    assert detect_format([t(1, 80, 169)] * 3 + [t(1, 44, 169)] * 3) == "nanodet"
    with pytest.raises(DecoderError, match="set format"):
        detect_format([t(1, 10)])


def test_ssd_anchor_grid() -> None:
    a = ssd_anchors(300, 300)
    assert a.shape == (1917, 4)
    # first cell of the lowest layer: (0.1, 1), (0.2, 2), (0.2, 0.5) at the centre of 19 cells
    assert a[0].tolist() == pytest.approx([0.5 / 19, 0.5 / 19, 0.1, 0.1])
    assert a[1, 2:].tolist() == pytest.approx([0.2 / 2**0.5, 0.2 * 2**0.5])
    assert a[-1, :2].tolist() == pytest.approx([0.5, 0.5])  # the 1x1 layer
    assert ssd_anchors(320, 320).shape == (2034, 4)


def test_label_files(tmp_path: Path) -> None:
    p = tmp_path / "labels.txt"
    p.write_text("0 person\n1: car\n\nbicycle\n", encoding="utf-8")
    assert read_labels(p) == ["person", "car", "bicycle"]
    assert label_offset(["???", "a"], 1) == 1
    assert label_offset(["a", "b"], None) == 0


# -- the bundled models, no ../shared needed ---------------------------------------------------
SAMPLE = REPO / "spyoncino" / "data" / "sample.mp4"
PERSON_MODEL = "spyoncino:models/person_ssdlite_mobilenet_v2_int8.tflite"


def test_bundled_default_model_finds_people_and_the_parked_van() -> None:
    # frame 100 of the sample (looked at): six people on the paths, a white van parked at the
    # top right (x 645-720, y 40-95) and the front of a car beside it
    model = load_model(Config())
    assert model.format == "nanodet"
    assert len(model.labels) == 80
    assert model.backend.inputs[0].dtype == np.int8  # full int8: input and outputs
    assert all(o.dtype == np.int8 for o in model.backend.outputs)
    res = model.run(frame_at(SAMPLE, 100), min_score=0.5)
    people = [d for d in res.detections if d.label == "person"]
    assert len(people) >= 5
    for d in people:  # pedestrians: taller than wide, inside the frame
        assert 0 <= d.x1 < d.x2 <= 768
        assert 0 <= d.y1 < d.y2 <= 576
        assert (d.y2 - d.y1) > (d.x2 - d.x1)
    vehicles = [d for d in res.detections if d.label in ("car", "truck")]
    assert any(d.x1 > 600 and d.y2 < 130 and (d.x2 - d.x1) > 40 for d in vehicles)
    assert {d.label for d in res.detections} <= {"person", "car", "truck"}


def test_person_model_stays_an_option_and_finds_people_in_the_sample() -> None:
    model = load_model(Config(model=PERSON_MODEL))
    assert model.format == "ssd"
    assert model.labels == ["person"]
    img = frame_at(SAMPLE, 100)
    res = model.run(img, min_score=0.5)
    assert len(res.detections) >= 4
    assert {d.label for d in res.detections} == {"person"}
    for d in res.detections:
        assert 0 <= d.x1 < d.x2 <= 768
        assert 0 <= d.y1 < d.y2 <= 576
        assert (d.y2 - d.y1) > (d.x2 - d.x1)


def test_the_package_data_holds_the_models_their_labels_and_licences() -> None:
    import tomllib
    from importlib import resources

    models = Path(str(resources.files("spyoncino") / "data" / "models"))
    for name in (
        "coco_nanodet_m_416_int8.tflite",
        "coco80_labels.txt",
        "LICENSE.human-models",
        "person_ssdlite_mobilenet_v2_int8.tflite",
        "person_ssdlite_mobilenet_v2_int8.txt",
        "LICENSE.person_ssdlite_mobilenet_v2",
    ):
        assert (models / name).is_file(), name
    assert "MIT License" in (models / "LICENSE.human-models").read_text(encoding="utf-8")
    assert len((models / "coco80_labels.txt").read_text(encoding="utf-8").split()) >= 80
    # the wheel takes every file under data/ (pyproject's package-data)
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "data/**/*" in meta["tool"]["setuptools"]["package-data"]["spyoncino"]
    notice = (REPO / "NOTICE").read_text(encoding="utf-8")
    assert "coco_nanodet_m_416_int8.tflite" in notice
    assert "Vladimir Mandic" in notice


# -- real models on real footage ---------------------------------------------------------------
def _run(name: str, labels: list[str], min_score: float = 0.3) -> list[object]:
    model = Model(open_backend(MODELS / name), labels)
    return list(model.run(frame_at(VTEST, 100), min_score=min_score).detections)


def _box(d: object) -> Box:
    x1, y1, x2, y2 = box_of(d)
    return Box(x1=x1, y1=y1, x2=x2, y2=y2)


@needs_shared
def test_int8_person_model_on_vtest() -> None:
    dets = _run("person_ssdlite_mobilenet_v2_int8.tflite", ["person"])
    assert sum(d.label == "person" for d in dets) >= 4  # type: ignore[attr-defined]


@needs_shared
def test_int8_and_fp32_agree() -> None:
    q = _run("person_ssdlite_mobilenet_v2_int8.tflite", ["person"], 0.5)
    f = _run("person_ssdlite_mobilenet_v2_fp32.tflite", ["???", "person"], 0.5)
    assert len(q) >= 4
    assert len(q) == len(f)
    for d in q:
        best = max(_box(d).iou(_box(g)) for g in f)
        assert best >= 0.7


@needs_shared
def test_onnx_person_model_with_postprocessing_agrees_with_tflite() -> None:
    o = _run("person_ssdlite_mobilenet_v2.onnx", ["person"], 0.5)
    f = _run("person_ssdlite_mobilenet_v2_fp32.tflite", ["person"], 0.5)
    assert len(o) >= 4
    for d in o:
        assert max(_box(d).iou(_box(g)) for g in f) >= 0.7


@needs_shared
@pytest.mark.parametrize(
    "name",
    ["coco_nanodet_m_416_fp16.tflite", "coco_nanodet_m_416_drq.tflite", "coco_nanodet_m_416.onnx"],
)
def test_nanodet_finds_people_and_the_parked_vehicle(name: str) -> None:
    labels = read_labels(MODELS / "coco80_labels.txt")
    dets = _run(name, labels, 0.45)
    persons = [d for d in dets if d.label == "person"]  # type: ignore[attr-defined]
    vehicles = [d for d in dets if d.label in ("car", "truck")]  # type: ignore[attr-defined]
    assert len(persons) >= 5
    assert vehicles
    # the parked vehicle is at the top right of the frame
    assert all(_box(v).x1 > 600 and _box(v).y2 < 120 for v in vehicles)


@needs_shared
def test_oidv4_labels_map() -> None:
    labels = read_labels(MODELS / "oidv4_labels.txt")
    assert labels[0] == "???"
    assert len(labels) == 24
    model = Model(open_backend(MODELS / "oidv4_ssd_mobilenet_v2_fp16.tflite"), labels)
    assert model.offset == 1
    assert model.decoder.classes == 23
    assert model.label_of(3) == "person"
    assert model.label_of(22) == "car"
    dets = model.run(frame_at(VTEST, 100), min_score=0.4).detections
    assert sum(d.label == "person" for d in dets) >= 4
    # they are the people the person-only model sees: the label index maps right
    persons = _run("person_ssdlite_mobilenet_v2_fp32.tflite", ["person"], 0.3)
    matched = [
        d for d in dets if d.label == "person" and max(_box(d).iou(_box(p)) for p in persons) >= 0.5
    ]
    assert len(matched) >= 4


def test_yolov8_onnx_export_layout(tmp_path: Path) -> None:
    """An ONNX graph shaped like an Ultralytics ONNX export: NCHW float input, pixel boxes."""
    onnx = pytest.importorskip("onnx", reason="the onnx package builds the test graph (dev extra)")
    from onnx import TensorProto, helper, numpy_helper

    values = yolo_values(normalised=False)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["output0"], value=numpy_helper.from_array(values))],
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(values.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    backend = open_backend(path)
    assert backend.name == "onnx-cpu"
    assert backend.inputs[0].shape == (1, 3, INPUT, INPUT)
    m = Model(backend, ["person", "car", "dog"])
    assert m.format == "yolov8"
    assert m.pre.nchw
    check_yolo(m)


# LiteRT's Delegate.__del__ trips over its own half-built object when loading fails
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_edgetpu_without_the_runtime_is_a_clear_error() -> None:
    # no Edge TPU runtime on this machine: the real load_delegate fails
    with pytest.raises(ModuleConfigError, match=r"detector\.model: .*libedgetpu\.so\.1"):
        load_model(Config(backend="edgetpu"))


def test_onnx_providers_prefer_tensorrt_with_an_engine_cache(tmp_path: Path) -> None:
    from spyoncino.modules.process._backends import onnx_providers

    assert onnx_providers({"CPUExecutionProvider"}, tmp_path) == ["CPUExecutionProvider"]
    assert not (tmp_path / "trt").exists()
    jetson = {"TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"}
    got = onnx_providers(jetson, tmp_path / "trt")
    assert got[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    name, opts = got[0]
    assert name == "TensorrtExecutionProvider"
    assert opts == {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path / "trt"),
    }
    assert (tmp_path / "trt").is_dir()


# -- the model's input from the decoder's planes ------------------------------------------------
SAMPLE = REPO / "spyoncino" / "data" / "sample.mp4"


def sample_frames(fmt: str, every: int = 40, count: int = 4) -> list[tuple[Frame, np.ndarray]]:
    """Frames of the bundled sample as a camera input hands them over, in pixel format
    ``fmt`` (their full-size colour conversion fails if anything asks for it), each with the
    picture PyAV converts in full."""
    from spyoncino.helpers.camera import av_frame_to_raw

    def refuse() -> np.ndarray:
        raise AssertionError("the whole picture was converted")

    out = []
    with av.open(str(SAMPLE)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % every:
                continue
            raw = av_frame_to_raw(f if fmt == f.format.name else f.reformat(format=fmt), 320)
            assert raw.resize is not None
            frame = Frame(
                "cam",
                i,
                0.0,
                0.0,
                raw.width,
                raw.height,
                raw.luma,
                _decode=refuse,
                _resize=raw.resize,
            )
            out.append((frame, f.to_ndarray(format="bgr24")))
            if len(out) == count:
                break
    return out


@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p", "nv12"])
def test_the_model_input_is_converted_at_its_own_size_and_matches_the_full_conversion(
    fmt: str,
) -> None:
    model = load_model(Config())
    regions = [None, (97, 31, 421, 287)]  # the whole frame, and an odd crop (snapped to even)
    for frame, bgr in sample_frames(fmt):
        for region in regions:
            r = region or (0, 0, frame.width, frame.height)
            snapped = (r[0] - r[0] % 2, r[1] - r[1] % 2, r[2] + r[2] % 2, r[3] + r[3] % 2)
            fast, tf = model.pre(frame, r)
            fast = fast.astype(int)
            slow, tf_slow = model.pre(bgr, snapped)
            assert (tf.x0, tf.y0, tf.sx, tf.sy) == (tf_slow.x0, tf_slow.y0, tf_slow.sx, tf_slow.sy)
            assert np.abs(fast - slow.astype(int)).mean() < 2.0, (fmt, region)
        assert frame._image is None  # nothing full-size was converted


def test_a_frame_is_inferred_without_converting_the_whole_picture_and_finds_the_same_people() -> (
    None
):
    model = load_model(Config())
    for frame, bgr in sample_frames("yuv420p"):
        fast = [d for d in model.run(frame, min_score=0.5).detections if d.label == "person"]
        slow = [d for d in model.run(bgr, min_score=0.5).detections if d.label == "person"]
        assert len(fast) == len(slow) > 0
        for d in fast:
            assert max(iou(box_of(d), box_of(s)) for s in slow) > 0.8
        assert frame._image is None  # nothing full-size was converted


def test_the_reused_input_buffer_never_leaks_one_crop_into_the_next() -> None:
    info = TensorInfo("in", (1, 100, 100, 3), np.uint8)
    pre = Preprocessor(info, rgb=False, mean=(0, 0, 0), std=(1, 1, 1), resize="letterbox")
    white = np.full((100, 200, 3), 255, np.uint8)  # wide: bars top and bottom
    black = np.zeros((200, 100, 3), np.uint8)  # tall: bars left and right
    first = pre(white, (0, 0, 200, 100))[0].copy()
    second = pre(black, (0, 0, 100, 200))[0]
    assert first[0, 50, 50].tolist() == [255, 255, 255]
    assert second[0, 50, 50].tolist() == [0, 0, 0]
    assert second[0, 50, 0].tolist() == [114, 114, 114]  # a bar now, white before
    assert second[0, 0, 50].tolist() == [0, 0, 0]  # the picture now, a bar before
