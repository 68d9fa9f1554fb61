"""Hardware profiles: per-board defaults (frame sizes, detector, threads, MemoryMax).

The profiles are YAML files shipped inside the package (``spyoncino/data/profiles``; the
repository's ``hardware/profiles`` points there). One is chosen at start from
``/proc/device-tree/model`` (every Raspberry Pi and Jetson has it), from the CPU architecture
when there is no device tree (PCs), or by name / path when the configuration says so.

``python -m spyoncino.platform.profiles --json`` prints the choice; the Ansible role uses it to
put the profile's ``MemoryMax=`` into the unit, so the board is detected by one piece of code.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
#: the profile for an ARM board no profile names: the cheapest settings run everywhere
UNKNOWN_BOARD_FALLBACK = "pi-zero-2w"
NO_DEVICE_TREE_FALLBACK = "generic-x86"
#: the detector's default model (core names no module, so the file name is repeated here; a
#: test checks the two agree)
BUNDLED_MODEL_FILE = "coco_nanodet_m_416_int8.tflite"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraProfile(_Part):
    detect_resolution: tuple[int, int] = Field(
        description="Main stream width, height of a CSI camera that sets none (csi.width, "
        "csi.height): what snapshots and the detector see."
    )
    lores_size: tuple[int, int] = Field(
        description="Informative: the low-resolution stream motion reads at the detect size "
        "(the lores stream itself is luma_width wide, at the main stream's aspect ratio)."
    )
    max_fps: float = Field(
        gt=0,
        le=120,
        description="Frames per second processed from a camera that sets no max_fps "
        "(runtime.camera_max_fps).",
    )
    buffer_mb: float = Field(
        gt=0,
        le=1024,
        description="Memory budget of one camera's buffered video (runtime.camera_buffer_mb): "
        "its packet ring and its pre-roll pictures are each held within it.",
    )


class MotionProfile(_Part):
    downscale_width: int = Field(
        ge=64, le=1920, description="Width of the grey plane motion reads."
    )


class DetectorProfile(_Part):
    model: str = Field(
        description="Suggested detector.model: 'spyoncino:models/<file>' for a packaged one."
    )
    backend: str = Field(description="litert, tflite or onnxruntime.")
    threads: int = Field(ge=0, le=64, description="Inference threads; 0: one per CPU core.")


class RuntimeProfile(_Part):
    workers: int = Field(ge=1, le=16, description="Executor threads (runtime.workers).")


class ServiceProfile(_Part):
    memory_max: str = Field(
        pattern=r"^(\d+[KMGT]?|\d{1,3}%|infinity)$",
        description="systemd MemoryMax= for the unit: bytes with K/M/G/T, or a share of RAM.",
    )
    picamera2: bool = Field(description="Install python3-picamera2/libcamera from apt.")
    pip_extras: tuple[str, ...] = Field(default=(), description="Extras of the spyoncino package.")


class Profile(_Part):
    name: str
    description: str
    match: tuple[str, ...] = Field(
        default=(), description="Substrings of /proc/device-tree/model; the longest match wins."
    )
    machines: tuple[str, ...] = Field(
        default=(), description="platform.machine() values chosen when there is no device tree."
    )
    camera: CameraProfile
    motion: MotionProfile
    detector: DetectorProfile
    runtime: RuntimeProfile
    service: ServiceProfile


class ProfileError(Exception):
    """A profile file is missing or invalid; the message names the file and the key."""


def profiles_dir() -> Path:
    return Path(str(resources.files("spyoncino") / "data" / "profiles"))


def load_profile(path: Path) -> Profile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ProfileError(f"{path}: cannot read the profile: {e}") from e
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ProfileError(f"{path}: {key}: {first['msg']}") from e


def load_profiles(directory: Path | None = None) -> dict[str, Profile]:
    """Every packaged profile by name."""
    folder = directory or profiles_dir()
    out: dict[str, Profile] = {}
    for path in sorted(folder.glob("*.yaml")):
        profile = load_profile(path)
        if profile.name != path.stem:
            raise ProfileError(f"{path}: name: {profile.name!r} differs from the file name")
        out[profile.name] = profile
    return out


def read_model(model_path: Path) -> str | None:
    """The board's model string from the device tree (NUL-terminated there), or None."""
    try:
        raw = model_path.read_bytes()
    except OSError:
        return None
    text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
    return text or None


def detect_profile(
    model_path: Path = DEVICE_TREE_MODEL,
    override: str | Path | None = None,
    *,
    machine: str | None = None,
    profiles: dict[str, Profile] | None = None,
) -> tuple[Profile, str]:
    """The profile for this machine and a sentence saying why it was chosen.

    ``override`` is a profile name (``pi-4``) or a path to a profile YAML file; ``"auto"``
    or None means detect.
    """
    known = profiles if profiles is not None else load_profiles()
    if override is not None and str(override) not in ("", "auto"):
        text = str(override)
        if text in known:
            return known[text], f"profile {text!r} set in the configuration"
        path = Path(text)
        if path.suffix in (".yaml", ".yml") or path.is_file():
            return load_profile(path), f"profile file {str(path)!r} set in the configuration"
        raise ProfileError(
            f"hardware profile {text!r} is neither a known profile ({', '.join(sorted(known))}) "
            "nor a YAML file"
        )
    arch = machine or platform.machine()
    model = read_model(model_path)
    if model is not None:
        best: tuple[int, Profile, str] | None = None
        for profile in known.values():
            for needle in profile.match:
                if needle.lower() in model.lower() and (best is None or len(needle) > best[0]):
                    best = (len(needle), profile, needle)
        if best is not None:
            return best[1], f"device tree model {model!r} matches {best[2]!r}"
        fallback = known[UNKNOWN_BOARD_FALLBACK]
        return fallback, (
            f"device tree model {model!r} matches no profile; using the most frugal one "
            f"({fallback.name}); set the profile in the configuration to choose another"
        )
    for profile in known.values():
        if arch in profile.machines:
            return profile, f"no device tree ({model_path} absent) and CPU architecture {arch}"
    fallback = known[NO_DEVICE_TREE_FALLBACK]
    return fallback, (
        f"no device tree ({model_path} absent) and CPU architecture {arch} has no profile; "
        f"using {fallback.name}"
    )


def profile_report(
    model_path: Path = DEVICE_TREE_MODEL, override: str | Path | None = None
) -> list[str]:
    """Lines for ``spyoncino doctor``: which profile, why, and what it sets."""
    try:
        profile, reason = detect_profile(model_path, override)
    except ProfileError as e:
        return [f"hardware profile: ERROR {e}"]
    c, d = profile.camera, profile.detector
    threads = d.threads or "one per core"
    # the profile names a packaged model: say whether it is what runs when detector.model is unset
    if d.model.endswith(f"/{BUNDLED_MODEL_FILE}"):
        model = f"model {d.model} (the default)"
    else:
        model = (
            f"model {d.model} (this profile's default when detector.model is unset; "
            f"elsewhere spyoncino:models/{BUNDLED_MODEL_FILE})"
        )
    return [
        f"hardware profile: {profile.name} ({profile.description})",
        f"  chosen because: {reason}",
        f"  camera: detect {c.detect_resolution[0]}x{c.detect_resolution[1]}, "
        f"lores {c.lores_size[0]}x{c.lores_size[1]}, up to {c.max_fps:g} fps",
        f"  motion: downscale to {profile.motion.downscale_width} px wide",
        f"  detector: {threads} threads on {d.backend}; {model}",
        f"  service: MemoryMax={profile.service.memory_max}, workers {profile.runtime.workers}",
    ]


def _as_json(profile: Profile, reason: str) -> dict[str, Any]:
    return {"profile": profile.name, "reason": reason, **profile.model_dump(mode="json")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spyoncino.platform.profiles", description="Show the hardware profile."
    )
    parser.add_argument("--profile", default=None, help="name or YAML path (default: detect)")
    parser.add_argument("--model-file", type=Path, default=DEVICE_TREE_MODEL)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        profile, reason = detect_profile(args.model_file, args.profile)
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_as_json(profile, reason), sort_keys=True))
    else:
        print("\n".join(profile_report(args.model_file, args.profile)))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through the CLI test
    sys.exit(main())
