"""Inference runtimes behind one small interface, private to the detector module.

Every runtime is imported lazily inside ``open_backend`` so that a missing optional library
disables the detector with a clear message naming the extra to install, never the app.

* ``litert``: ``ai_edge_litert.interpreter`` (LiteRT, the default install), falling back to
  ``tflite_runtime.interpreter``; XNNPACK is the default CPU delegate of both, ``num_threads``
  sets its threads; the Coral EdgeTPU delegate (``libedgetpu.so.1``) when asked for.
* ``onnx``: ONNX Runtime, CPU, plus the TensorRT and CUDA execution providers when the
  installed build has them (``onnxruntime-gpu`` on a Jetson).

Tensors are returned raw (quantized where the model is quantized); the decoders dequantize
only the few values they keep, which is much cheaper than dequantizing whole outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

BackendName = Literal["auto", "litert", "tflite", "edgetpu", "onnx"]

EDGETPU_LIBRARY = "libedgetpu.so.1"


class BackendError(Exception):
    """The model cannot be loaded or the runtime is missing; the message says what to do."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """What a decoder needs to know about one input or output tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: npt.DTypeLike
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.dtype(self.dtype).kind in "iu"

    def dequantize(self, values: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        if self.quantized:
            return (values.astype(np.float32) - np.float32(self.zero_point)) * np.float32(
                self.scale
            )
        return values.astype(np.float32, copy=False)

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape)
        text = f"{self.name} [{dims}] {np.dtype(self.dtype).name}"
        if self.quantized:
            text += f" (scale {self.scale:.6g}, zero point {self.zero_point})"
        return text


class Backend(Protocol):
    """One loaded model. ``invoke`` is blocking: call it from the executor, one at a time."""

    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def invoke(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]: ...


class LiteRTBackend:
    """A TFLite model on LiteRT (or tflite_runtime), optionally on a Coral EdgeTPU."""

    def __init__(self, path: Path, *, num_threads: int, edgetpu: bool, prefer: str) -> None:
        module, label = _import_tflite(prefer)
        delegates = []
        if edgetpu:
            try:
                delegates.append(module.load_delegate(EDGETPU_LIBRARY))
            except (ValueError, OSError, RuntimeError) as e:
                raise BackendError(
                    f"cannot load the Coral EdgeTPU delegate {EDGETPU_LIBRARY} ({e}); install "
                    "libedgetpu1-std and plug the accelerator in, or set detector.backend to "
                    "'litert'"
                ) from e
        try:
            self._it = module.Interpreter(
                model_path=str(path),
                num_threads=num_threads,
                experimental_delegates=delegates or None,
            )
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"not a loadable TFLite model: {_first_line(e)}") from e
        self.name = "edgetpu" if edgetpu else label
        ins = self._it.get_input_details()
        if len(ins) != 1:
            raise BackendError(f"expected one input tensor, the model has {len(ins)}")
        self._in_index = int(ins[0]["index"])
        self._out_index = [int(d["index"]) for d in self._it.get_output_details()]
        self.inputs = [_tflite_info(d) for d in ins]
        self.outputs = [_tflite_info(d) for d in self._it.get_output_details()]

    def invoke(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        self._it.set_tensor(self._in_index, tensor)
        self._it.invoke()
        # get_tensor copies, so results survive the next invoke on another thread's frame
        return [self._it.get_tensor(i) for i in self._out_index]


def _tflite_info(d: dict[str, Any]) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorInfo(
        name=str(d["name"]),
        shape=tuple(int(x) for x in d["shape"]),
        dtype=d["dtype"],
        scale=float(scale),
        zero_point=int(zp),
    )


def _import_tflite(prefer: str) -> tuple[Any, str]:
    order = ["tflite", "litert"] if prefer == "tflite" else ["litert", "tflite"]
    for which in order:
        try:
            if which == "litert":
                from ai_edge_litert import interpreter as litert

                return litert, "litert"
            import tflite_runtime.interpreter as tflite  # type: ignore[import-not-found,unused-ignore]

            return tflite, "tflite"
        except ImportError:
            continue
    raise BackendError(
        "no TFLite runtime is installed: pip install ai-edge-litert (the default install), "
        "or the 'tflite' extra: pip install 'spyoncino[tflite]'"
    )


class OnnxBackend:
    """An ONNX model on ONNX Runtime: TensorRT, then CUDA, then CPU, as available."""

    def __init__(
        self,
        path: Path,
        *,
        num_threads: int,
        input_size: tuple[int, int],
        cache_dir: Path | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError(
                "ONNX Runtime is not installed: pip install 'spyoncino[onnx]' "
                "(or 'spyoncino[jetson]' for the CUDA/TensorRT build)"
            ) from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        wanted = onnx_providers(set(ort.get_available_providers()), cache_dir)
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        except Exception as e:  # onnxruntime raises its own untyped exceptions
            raise BackendError(f"not a loadable ONNX model: {_first_line(e)}") from e
        used = self._sess.get_providers()
        self.name = "onnx-" + (used[0].removesuffix("ExecutionProvider").lower() if used else "cpu")
        ins = self._sess.get_inputs()
        if len(ins) != 1:
            raise BackendError(f"expected one input tensor, the model has {len(ins)}")
        self._in_name = ins[0].name
        self._out_names = [o.name for o in self._sess.get_outputs()]
        self.inputs = [_onnx_info(ins[0], input_size)]
        self.outputs = [_onnx_info(o, None) for o in self._sess.get_outputs()]

    def invoke(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        out = self._sess.run(self._out_names, {self._in_name: tensor})
        return [np.asarray(o) for o in out]


def onnx_providers(available: set[str], cache_dir: Path | None) -> list[Any]:
    """TensorRT, then CUDA, then CPU, as the installed ONNX Runtime has them.

    TensorRT builds an engine for the model on first use, which takes minutes on a Jetson:
    with ``cache_dir`` the engine is kept there and reused at the next start.
    """
    out: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        opts: dict[str, Any] = {"trt_fp16_enable": True}
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
            except OSError:
                pass  # no cache: slower starts, same results
        out.append(("TensorrtExecutionProvider", opts))
    if "CUDAExecutionProvider" in available:
        out.append("CUDAExecutionProvider")
    out.append("CPUExecutionProvider")
    return out


_ONNX_TYPES: dict[str, npt.DTypeLike] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def _onnx_info(arg: Any, input_size: tuple[int, int] | None) -> TensorInfo:
    """Shape with dynamic dimensions filled in: batch 1, height/width from ``input_size``."""
    raw = list(arg.shape)
    shape: list[int] = []
    for i, d in enumerate(raw):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif i == 0:
            shape.append(1)
        elif input_size is not None and len(raw) == 4:
            channels_last = isinstance(raw[3], int) and raw[3] in (1, 3)
            hw_axes = (1, 2) if channels_last else (2, 3)
            shape.append(input_size[0] if i == hw_axes[0] else input_size[1])
        else:
            shape.append(-1)
    return TensorInfo(
        name=str(arg.name), shape=tuple(shape), dtype=_ONNX_TYPES.get(arg.type, np.float32)
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def open_backend(
    path: Path,
    *,
    backend: BackendName = "auto",
    num_threads: int = 2,
    input_size: tuple[int, int] = (300, 300),
    cache_dir: Path | None = None,
) -> Backend:
    """Load ``path`` on the runtime ``backend`` names (``auto``: by the file's suffix)."""
    suffix = path.suffix.lower()
    if backend == "auto":
        backend = "onnx" if suffix == ".onnx" else "litert"
    if backend == "onnx":
        if suffix != ".onnx":
            raise BackendError(f"the onnx backend needs a .onnx file, got {path.name!r}")
        return OnnxBackend(
            path, num_threads=num_threads, input_size=input_size, cache_dir=cache_dir
        )
    if suffix == ".onnx":
        raise BackendError(f"backend {backend!r} runs .tflite files, got {path.name!r}")
    return LiteRTBackend(
        path,
        num_threads=num_threads,
        edgetpu=backend == "edgetpu",
        prefer="tflite" if backend == "tflite" else "litert",
    )
