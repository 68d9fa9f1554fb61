"""What the box itself looks like: load, temperature, throttling, memory, disk, uptime.

Everything here is blocking file reads (cheap, but still run in the executor) except
``vcgencmd``, which is a subprocess with a timeout, run only where the binary exists (a Pi).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from spyoncino.helpers.files import disk_free
from spyoncino.helpers.system import cpu_temperature as cpu_temperature

#: ``vcgencmd get_throttled`` bits (Raspberry Pi firmware documentation).
THROTTLE_BITS = {
    0: "under-voltage",
    1: "arm frequency capped",
    2: "throttled",
    3: "soft temperature limit",
    16: "under-voltage occurred",
    17: "arm frequency capping occurred",
    18: "throttling occurred",
    19: "soft temperature limit occurred",
}


@dataclass(frozen=True)
class SystemInfo:
    load: tuple[float, float, float]
    cpus: int
    cpu_temp_c: float | None
    throttled: int | None
    throttle_flags: tuple[str, ...]
    mem_total: int
    mem_available: int
    disk_free: int
    disk_total: int
    uptime_s: float
    process_uptime_s: float
    version: str
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, object]:
        return {
            "load": list(self.load),
            "cpus": self.cpus,
            "cpu_temp_c": self.cpu_temp_c,
            "throttled": None if self.throttled is None else hex(self.throttled),
            "throttle_flags": list(self.throttle_flags),
            "mem_total_bytes": self.mem_total,
            "mem_available_bytes": self.mem_available,
            "disk_free_bytes": self.disk_free,
            "disk_total_bytes": self.disk_total,
            "uptime_s": round(self.uptime_s, 1),
            "process_uptime_s": round(self.process_uptime_s, 1),
            "version": self.version,
        }


def throttle_flags(value: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_BITS.items() if value & (1 << bit))


def _meminfo() -> tuple[int, int]:
    total = avail = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key == "MemTotal":
                    total = int(rest.split()[0]) * 1024
                elif key == "MemAvailable":
                    avail = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return total, avail


def _uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def collect(
    storage_root: Path, started_mono: float, version: str, throttled: int | None
) -> SystemInfo:
    """Blocking: run in the executor."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    total, avail = _meminfo()
    try:
        free, size = disk_free(storage_root)
    except OSError:
        free, size = 0, 0
    return SystemInfo(
        load=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
        cpus=os.cpu_count() or 1,
        cpu_temp_c=cpu_temperature(),
        throttled=throttled,
        throttle_flags=throttle_flags(throttled) if throttled else (),
        mem_total=total,
        mem_available=avail,
        disk_free=free,
        disk_total=size,
        uptime_s=_uptime(),
        process_uptime_s=time.monotonic() - started_mono,
        version=version,
    )


async def read_throttled(wait_s: float = 2.0) -> int | None:
    """``vcgencmd get_throttled`` -> the flag word, or None off a Pi or on any failure."""
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "get_throttled",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=wait_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return None
    text = out.decode("ascii", "replace").strip()  # "throttled=0x50000"
    _, _, value = text.partition("=")
    try:
        return int(value, 16)
    except ValueError:
        return None
