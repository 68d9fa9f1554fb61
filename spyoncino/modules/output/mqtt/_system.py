"""What the box says about itself: CPU temperature and the board's model (blocking reads)."""

from __future__ import annotations

from pathlib import Path


def cpu_temperature(root: Path = Path("/sys/class/thermal")) -> float | None:
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


def device_model(hardware_profile: str) -> str:
    """Blocking (reads the device tree): the board's model, else the profile's name."""
    from spyoncino.core.profiles import ProfileError, detect_profile, read_model

    model = read_model(Path("/proc/device-tree/model"))
    if model:
        return model[:100]
    try:
        profile, _why = detect_profile(override=hardware_profile)
    except (ProfileError, OSError, ValueError):
        return "generic"
    return profile.name
