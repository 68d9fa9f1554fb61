"""What the box says about itself: the board's model (blocking); the CPU temperature is the
shared one in ``spyoncino.helpers.system``."""

from __future__ import annotations

from pathlib import Path

from spyoncino.helpers.system import cpu_temperature as cpu_temperature


def device_model(hardware_profile: str) -> str:
    """Blocking (reads the device tree): the board's model, else the profile's name."""
    from spyoncino.platform.profiles import ProfileError, detect_profile, read_model

    model = read_model(Path("/proc/device-tree/model"))
    if model:
        return model[:100]
    try:
        profile, _why = detect_profile(override=hardware_profile)
    except (ProfileError, OSError, ValueError):
        return "generic"
    return profile.name
