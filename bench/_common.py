"""Shared bits of the benchmarks: where footage is, and how results are written."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SAMPLE = REPO / "spyoncino" / "data" / "sample.mp4"
_SHARED = [REPO.parent / "shared", Path("/work/shared")]
VTEST = next(
    (p / "media" / "vtest.mp4" for p in _SHARED if (p / "media" / "vtest.mp4").is_file()), None
)


def footage() -> Path:
    """The real clip when ../shared is present, else the bundled cut of it."""
    return VTEST if VTEST is not None else SAMPLE


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
        **data,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return out
