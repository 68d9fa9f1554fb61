"""Frigate's real motion detector, loaded at run time from a Frigate checkout.

Set ``SPYONCINO_FRIGATE_SRC`` to the root of a Frigate source tree (the folder holding
``frigate/motion/improved_motion.py``). Nothing of Frigate is copied into this repository:
``improved_motion.py`` is compiled from that tree as it is, and so is the one helper it
calls (``grab_cv2_contours``, taken from the tree's ``frigate/util/image.py`` by name). Only
the imports it makes of Frigate's configuration and camera plumbing (pydantic models, PTZ
metrics shared between processes) are stood in for by plain objects holding the defaults of
Frigate's own ``MotionConfig`` (read from the tree too, with the fields' defaults), because
importing ``frigate.config`` drags in the whole application. It needs SciPy
(``gaussian_filter``), as Frigate does.

Without the variable (or without SciPy) ``load()`` returns None and says why: benchmarks then
compare against OpenCV's MOG2 only, never against an imitation.
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys
import types
from pathlib import Path
from typing import Any

ENV = "SPYONCINO_FRIGATE_SRC"


def _motion_defaults(src: Path) -> dict[str, Any]:
    """The literal defaults of ``MotionConfig``'s fields in the tree's config module."""
    path = src / "frigate" / "config" / "camera" / "motion.py"
    tree = ast.parse(path.read_text())
    out: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "MotionConfig":
            for item in node.body:
                if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                    continue
                call = item.value
                if isinstance(call, ast.Call):
                    for kw in call.keywords:
                        if kw.arg == "default":
                            with contextlib.suppress(ValueError):
                                out[item.target.id] = ast.literal_eval(kw.value)
    return out


def _function(path: Path, name: str, env: dict[str, Any]) -> Any:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            mod = ast.Module(body=[node], type_ignores=[])
            exec(compile(mod, str(path), "exec"), env)
            return env[name]
    raise LookupError(f"{name} not found in {path}")


def load() -> tuple[Any, dict[str, Any]] | str:
    """(ImprovedMotionDetector class, its config defaults) or the reason it is unavailable."""
    root = os.environ.get(ENV)
    if not root:
        return f"{ENV} is not set (point it at a Frigate checkout to compare with Frigate)"
    src = Path(root)
    code = src / "frigate" / "motion" / "improved_motion.py"
    if not code.is_file():
        return f"{ENV}={root}: no frigate/motion/improved_motion.py there"
    try:
        import scipy.ndimage  # noqa: F401 - Frigate's detector needs it
    except ImportError:
        return "SciPy is missing (Frigate's detector uses scipy.ndimage): pip install scipy"
    import cv2

    defaults = _motion_defaults(src)
    grab = _function(src / "frigate" / "util" / "image.py", "grab_cv2_contours", {"cv2": cv2})

    class MotionDetector:  # the abstract base in frigate/motion/__init__.py declares only
        pass

    stubs = {
        "frigate": types.ModuleType("frigate"),
        "frigate.camera": types.ModuleType("frigate.camera"),
        "frigate.config": types.ModuleType("frigate.config"),
        "frigate.config.config": types.ModuleType("frigate.config.config"),
        "frigate.motion": types.ModuleType("frigate.motion"),
        "frigate.util": types.ModuleType("frigate.util"),
        "frigate.util.image": types.ModuleType("frigate.util.image"),
    }
    stubs["frigate.camera"].PTZMetrics = object  # type: ignore[attr-defined]
    stubs["frigate.config.config"].RuntimeMotionConfig = object  # type: ignore[attr-defined]
    stubs["frigate.motion"].MotionDetector = MotionDetector  # type: ignore[attr-defined]
    stubs["frigate.util.image"].grab_cv2_contours = grab  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        env: dict[str, Any] = {"__name__": "frigate_improved_motion"}
        exec(compile(code.read_text(), str(code), "exec"), env)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return env["ImprovedMotionDetector"], defaults


def detector(frame_shape: tuple[int, int], fps: int) -> Any:
    """A Frigate ImprovedMotionDetector with Frigate's default motion config, or a reason."""
    got = load()
    if isinstance(got, str):
        return got
    cls, defaults = got
    import numpy as np

    cfg = types.SimpleNamespace(**defaults)
    # what Frigate's RuntimeMotionConfig builds when no mask is drawn: all pixels in
    cfg.rasterized_mask = np.full(frame_shape, 255, np.uint8)
    return cls((frame_shape[0], frame_shape[1], 1), cfg, fps)
