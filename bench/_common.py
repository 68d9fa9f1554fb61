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


def service_env() -> dict[str, str]:
    """The environment for a ``spyoncino run`` a benchmark starts: this checkout's code, and no
    ``SPYONCINO_*`` variable of ours (the config layer reads those as settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPYONCINO_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def rss_kb(pid: int) -> int | None:
    """A process's resident memory (``VmRSS``) in kB; None once it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def rss_mb(pid: int) -> float | None:
    """A process's resident memory (``VmRSS``) in MB; None once it is gone or a zombie."""
    kb = rss_kb(pid)
    return None if kb is None else kb / 1024


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
