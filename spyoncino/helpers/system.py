"""Facts about the box itself, one implementation each (blocking reads: run them in the
executor from the event loop)."""

from __future__ import annotations

from pathlib import Path

THERMAL = Path("/sys/class/thermal")


def cpu_temperature(root: Path = THERMAL) -> float | None:
    """Degrees Celsius of the CPU zone (``cpu-thermal`` on a Pi), else the first zone; None
    where the kernel has no thermal zone."""
    best: float | None = None
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip()
            value = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if "cpu" in kind or "soc" in kind or "x86_pkg" in kind:
            return value
        if best is None:
            best = value
    return best
