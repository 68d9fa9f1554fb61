"""Loading and describing detection models (the detector, ``spyoncino models``, benchmarks)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import ModuleConfigError
from spyoncino.modules.process._detector_config import (
    BUILTIN_PREFIX,
    BUNDLED_MODEL,
    COCO_LABELS,
    PERSON_MODEL,
    Config,
)


def _data_path(name: str) -> Path:
    return Path(str(resources.files("spyoncino") / "data" / name))


def bundled_model_path() -> Path:
    return _data_path(f"models/{BUNDLED_MODEL}")


def resolve_model_path(value: str | None) -> Path:
    if value is None:
        return bundled_model_path()
    if value.startswith(BUILTIN_PREFIX):
        return _data_path(value[len(BUILTIN_PREFIX) :])
    return Path(value).expanduser()


def _labels_for(
    cfg: Config, model_path: Path, classes: int | None
) -> tuple[list[str], Path | None]:
    from spyoncino.modules.process._decoders import read_labels

    if cfg.labels is not None:
        path = resolve_model_path(cfg.labels)
        try:
            return read_labels(path), path
        except (OSError, UnicodeDecodeError) as e:
            raise ModuleConfigError(f"detector.labels: cannot read {str(path)!r}: {e}") from e
    for candidate in (
        model_path.with_suffix(".txt"),
        model_path.with_name(model_path.stem + "_labels.txt"),
    ):
        if candidate.is_file():
            return read_labels(candidate), candidate
    if classes in (80, 81):
        coco = _data_path(f"models/{COCO_LABELS}")
        return read_labels(coco), coco
    raise ModuleConfigError(
        f"detector.labels: model {str(model_path)!r} has {classes or 'an unknown number of'} "
        f"classes and no label file was found beside it ({model_path.stem}.txt): set "
        "detector.labels"
    )


def load_model(cfg: Config, cache_dir: Path | None = None) -> Any:
    """Load and check the configured model; every failure is a ModuleConfigError naming the key.

    Blocking (reads the file, builds the interpreter): call it from the executor.
    """
    from spyoncino.modules.process._backends import BackendError, open_backend
    from spyoncino.modules.process._decoders import DecoderError, Model, detect_format

    path = resolve_model_path(cfg.model)
    key = "detector.model"
    if not path.is_file():
        raise ModuleConfigError(f"{key}: model file {str(path)!r} does not exist")
    size = cfg.input_size or (300, 300)
    try:
        backend = open_backend(
            path,
            backend=cfg.backend,
            num_threads=cfg.num_threads,
            input_size=size,
            cache_dir=cache_dir,
        )
    except BackendError as e:
        raise ModuleConfigError(f"{key}: cannot load {str(path)!r}: {e}") from e
    try:
        fmt = detect_format(backend.outputs) if cfg.format == "auto" else cfg.format
        from spyoncino.modules.process._decoders import DECODERS, Preprocessor

        pre = Preprocessor(
            backend.inputs[0], rgb=True, mean=(0, 0, 0), std=(1, 1, 1), resize="stretch"
        )
        classes = DECODERS[fmt](backend.outputs, pre.size).classes
    except DecoderError as e:
        which = "detector.format" if cfg.format != "auto" else key
        raise ModuleConfigError(f"{which}: model {str(path)!r}: {e}") from e
    labels, labels_path = _labels_for(cfg, path, classes)
    rgb = None if cfg.channel_order == "auto" else cfg.channel_order == "rgb"
    try:
        return Model(
            backend,
            labels,
            fmt=fmt,  # type: ignore[arg-type]
            resize=cfg.resize,
            rgb=rgb,
            mean=cfg.input_mean,
            std=cfg.input_std,
            nms_iou=cfg.nms_iou,
            max_detections=cfg.max_detections,
        )
    except DecoderError as e:
        where = "detector.labels" if "label" in str(e) else key
        raise ModuleConfigError(
            f"{where}: {labels_path or 'labels'} for model {str(path)!r}: {e}"
        ) from e


def describe_models(app: AppConfig) -> list[str]:
    """Lines for ``spyoncino models``: the bundled and the configured model, their tensors."""
    cfg = app.section("detector", Config) if hasattr(app, "detector") else Config()
    seen: list[tuple[str, Config]] = [("bundled", Config())]
    if cfg.model is not None and resolve_model_path(cfg.model) != bundled_model_path():
        seen.append(("configured (detector.model)", cfg))
    lines: list[str] = []
    for title, c in seen:
        path = resolve_model_path(c.model)
        size = path.stat().st_size / 1e6 if path.is_file() else 0.0
        lines.append(f"{title}: {path} ({size:.1f} MB)")
        try:
            model = load_model(c)
        except ModuleConfigError as e:
            lines.append(f"  error: {e}")
            continue
        h, w = model.input_size
        shown = [label for label in model.labels if label not in ("???", "background")]
        more = f", ... ({len(shown)} in all)" if len(shown) > 8 else ""
        lines.append(
            f"  format {model.format}, backend {model.backend.name}, input {w}x{h} "
            f"({model.resize}), labels: {', '.join(shown[:8])}{more}"
        )
        lines.extend(f"  input  {t.describe()}" for t in model.backend.inputs)
        lines.extend(f"  output {t.describe()}" for t in model.backend.outputs)
    if cfg.model is None:
        lines.append("configured (detector.model): the bundled model")
    person = _data_path(f"models/{PERSON_MODEL}")
    if person.is_file() and all(resolve_model_path(c.model) != person for _, c in seen):
        lines.append(
            f"also packaged: {BUILTIN_PREFIX}models/{PERSON_MODEL} "
            f"({person.stat().st_size / 1e6:.1f} MB, people only, lighter; set detector.model "
            "to it)"
        )
    return lines
