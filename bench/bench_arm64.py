"""Resident memory of ``spyoncino run`` on arm64, under emulation (qemu-user), over time.

What runs: the Pi's venv (Debian bookworm arm64 root from ``tests/system/build_arm64_root.sh``,
cached in ``.cache/arm64``; the aarch64 wheelhouse resolved with the picamera2 constraints, as
``tests/system/test_arm64_imports.py`` builds it: numpy 1.26, OpenCV 4.11) with this checkout's
wheel, installed offline inside the root (the venv is kept in ``.cache/arm64/bench``). Inside
that root, through qemu-user (binfmt) in a private mount namespace with ``/proc``, an arm64
``/proc/cpuinfo`` (LiteRT crashes under qemu-user without it), ``/dev`` and the work folder
bound in, and no ``/sys`` (with the host's x86 ``/sys`` mounted, the service's first LiteRT
inference never returned under qemu-user, not investigated further; without it LiteRT's
cpuinfo prints "Error in cpuinfo" lines and runs): ``spyoncino run --forever`` with the
package's defaults for every module (motion, the bundled int8 NanoDet model on LiteRT, tracker,
snapshot, clip, animation, index, status page on 127.0.0.1) and Telegram into the local Bot
API emulator on 127.0.0.1 (the root shares the host's loopback), on one looping file camera:
the packaged sample clip, then the footage ``bench_rss.py`` uses (scaled to 1280x720 at
10 fps), copied into the root.

What RSS means here. The process the host sees is qemu's: its ``VmRSS`` holds the guest's
memory *and* qemu's own, chiefly the TCG translation cache (the "code buffer": one anonymous
``rwx`` mapping, 128 MiB at most in qemu 7.2's user mode, which has no ``-tb-size`` option;
its pages stay resident once written, even after a flush) and qemu's heap (translation-block
metadata, the guest page table). To tell them apart the guest is given a reserved address
space (``QEMU_RESERVED_VA``, 512 GiB, PROT_NONE until the guest maps it, so it costs no RSS):
every guest mapping then lies inside ``[guest_base, guest_base + reserved)`` of qemu's address
space, and everything outside it is qemu's own. ``/proc/<pid>/smaps`` of the qemu process is
summed both ways every sample: **guest** (the estimate of what the same process would hold on a
real arm64 kernel with 4 KiB pages) and **qemu** (code buffer, qemu's heap, qemu's binary, the
rest: host thread stacks, glib). The bench checks that no mapping of qemu's (its binary, its
``[heap]``, an ``rwx`` mapping) lies inside the guest window, and measures the overhead alone
on an idle ``python3 -c 'import time; time.sleep(...)'``: under qemu (raw / guest / qemu) and
natively on the host's x86-64 python of the same version line.

The guest figure is an estimate, not a Pi's RSS: page faults follow the guest's accesses, but
the code pages qemu reads to translate count as touched (as executing them would natively);
a Pi 5 running Raspberry Pi OS's 16 KiB-page kernel rounds every mapping up further; and the
libraries are the Pi venv's (numpy 1.26, OpenCV 4.11), not the x86-64 venv's of ``rss.json``.

Runs (``--runs footage:variant``; default: the sample clip with the defaults, the 720p
footage with the defaults, with tracks kept 60 s, and with that and the Pi 4's profile; see
VARIANTS: under emulation an inference takes seconds, longer than the 5 s a track waits, so
with the defaults no event opens). Reported per run: start (30 s after the first decoded
frame: under emulation the imports and the model take far longer than on a real board), peak,
steady (median of the last minute), end (median of the last 10 s), raw and guest, qemu's
parts at the end, the guest's biggest mappings at the end, what the pipeline did (frames
decoded and dropped by reason, inferences, detections, events, media written, Telegram
sends: probably fewer inferences than a Pi runs, so fewer events), the load average, and the
x86-64 one-camera figures of ``bench/results/rss.json`` beside them. CPU time is given only
as ``cpu_s_emulated`` (qemu's user + system seconds on this x86-64 machine): **emulated, not
a Pi figure; CPU figures on a real Pi are to be measured** (``make bench`` on the board).

Needs root (mount namespace, chroot), mmdebstrap and the qemu-aarch64 binfmt handler
(qemu-user-static, binfmt-support); the first run builds the root and wheelhouse (network to
Debian's mirror and the package index, as ``make test-system`` does) and the venv (a few
minutes under emulation). Not part of CI; ``make bench`` runs it as root (about 25 minutes)
and skips it, saying why, otherwise.

Run: ``python bench/bench_arm64.py [--duration 300] [--runs sample:defaults,720p:events]`` ->
``bench/results/arm64.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import REPO, RESULTS, SAMPLE, rss_kb, write_result
from bench_idle import proc_cpu
from bench_rss import footage_720p, write_config
from bench_rtsp import free_port

from tests.support.botapi import BotApiEmulator

CACHE = REPO / ".cache" / "arm64"
WORK = CACHE / "bench"
CPUINFO = REPO / "image" / "files" / "cpuinfo-arm64"
#: the guest's reserved address space: every guest mapping lies in [base, base + this)
RESERVED_VA = 0x80_0000_0000  # 512 GiB
#: the window classified as the guest's: the reservation plus room for qemu's guest_base
#: (a page here); qemu's own mappings sit near 0x5555_0000_0000 and 0x7f00_0000_0000
GUEST_WINDOW = 2 * RESERVED_VA
START_AFTER_FIRST_FRAME_S = 30.0
SAMPLE_EVERY_S = 2.0
SCRAPE_EVERY_S = 10.0
CHAT = 4242
#: the host's own interpreter for the idle comparison (the distribution's, as in the root)
NATIVE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").is_file() else sys.executable
_MAP = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


# -- memory of the qemu process, split into the guest's and qemu's own ------------------------
def _bucket(path: str) -> str:
    if not path:
        return "[anon]"
    if path.startswith("["):
        return path
    name = re.sub(r"(-[0-9a-f]{8})?(\.cpython.*)?\.so.*$", "", Path(path).name)
    if "site-packages/" in path:
        name = f"{path.split('site-packages/', 1)[1].split('/', 1)[0]}:{name}"
    return name


def split_smaps(pid: int) -> dict[str, Any] | None:
    """Rss of a qemu-user process in kB: the guest's (inside the reserved window) and qemu's."""
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return None
    guest = 0
    qemu: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    intruders = 0
    where: tuple[bool, str, str] = (False, "", "")
    for line in lines:
        m = _MAP.match(line)
        if m:
            start, perms, path = int(m.group(1), 16), m.group(3), m.group(4).strip()
            inside = start < GUEST_WINDOW
            if inside and ("qemu" in path or path == "[heap]" or perms.startswith("rwx")):
                intruders += 1
            where = (inside, perms, path)
            continue
        if not line.startswith("Rss:"):
            continue
        kb = int(line.split()[1])
        inside, perms, path = where
        if inside:
            guest += kb
            by_file[_bucket(path)] += kb
        elif perms.startswith("rwx") and not path:
            qemu["code_buffer"] += kb
        elif path == "[heap]":
            qemu["heap"] += kb
        elif "qemu" in path:
            qemu["binary"] += kb
        else:
            qemu["other"] += kb
    return {
        "guest_kb": guest,
        "qemu_kb": dict(qemu),
        "total_kb": guest + sum(qemu.values()),
        "guest_top_mb": {k: round(v / 1024, 1) for k, v in by_file.most_common(15)},
        "qemu_mappings_inside_guest_window": intruders,
    }


# -- the arm64 root, its venv and the work folder --------------------------------------------
def _run(*argv: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def arm64_root() -> Path:
    built = _run("bash", str(REPO / "tests" / "system" / "build_arm64_root.sh"))
    if built.returncode == 3:  # no qemu-aarch64 binfmt handler: skipped, as the test does
        print(f"bench_arm64: skipped: {built.stderr.strip()}")
        raise SystemExit(0)
    if built.returncode != 0:
        raise SystemExit(f"no arm64 root ({built.returncode}):\n{built.stderr[-2000:]}")
    return Path(dict(x.split("=", 1) for x in built.stdout.split() if "=" in x)["ROOTFS"])


def chroot_script(
    root: Path, inner: list[str], env: dict[str, str], wheels: Path | None = None
) -> list[str]:
    """argv running ``inner`` inside the root under qemu-user, in a private mount namespace."""
    binds = f"mkdir -p '{WORK}/wheels'; mount --bind -o ro '{wheels}' '{root}/srv/wheels'"
    envs = " ".join(f"{k}={v}" for k, v in env.items())
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in inner)
    script = f"""set -e
mount -t proc proc '{root}/proc'
mount --bind '{CPUINFO}' '{root}/proc/cpuinfo'
mount --rbind /dev '{root}/dev'
mount --bind '{WORK}' '{root}/srv'
{binds if wheels else ""}
exec chroot '{root}' /usr/bin/env -i PATH=/srv/venv/bin:/usr/bin:/bin HOME=/root \
  LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 {envs} {quoted}
"""
    return ["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script]


def prepare_venv(root: Path) -> str:
    """The Pi venv in WORK/venv (dependencies installed once per wheelhouse), this checkout's
    wheel reinstalled into it; returns the wheel's name."""
    from tests.system.test_arm64_imports import _wheelhouse
    from tests.system.test_pi_constraints import CONSTRAINTS

    WORK.mkdir(parents=True, exist_ok=True)
    dist = WORK / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    out = _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", str(dist), str(REPO),
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"wheel build failed:\n{out.stderr[-2000:]}")
    (wheel,) = dist.glob("spyoncino-*.whl")
    try:
        house = _wheelhouse(wheel)
    except BaseException as e:  # pytest.skip's exception, outside pytest
        if isinstance(e, KeyboardInterrupt):
            raise
        raise SystemExit(f"no aarch64 wheelhouse: {e}") from None
    shutil.copy(CONSTRAINTS, WORK / "constraints.txt")
    key = hashlib.sha256((house.name + CONSTRAINTS.read_text()).encode()).hexdigest()[:12]
    marker = WORK / "venv" / ".deps-key"
    pip = "/srv/venv/bin/pip install -q --no-index -f /srv/wheels -c /srv/constraints.txt"
    if marker.is_file() and marker.read_text() == key:
        inside = f"{pip} --no-deps --force-reinstall /srv/dist/{wheel.name}"
    else:
        shutil.rmtree(WORK / "venv", ignore_errors=True)
        inside = f"python3 -m venv --system-site-packages /srv/venv && {pip} /srv/dist/{wheel.name}"
    t0 = time.monotonic()
    ran = _run(*chroot_script(root, ["/bin/sh", "-c", inside], {}, wheels=house))
    if ran.returncode != 0:
        raise SystemExit(f"venv install in the arm64 root failed:\n{ran.stderr[-3000:]}")
    marker.write_text(key)
    print(f"arm64 venv ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return wheel.name


# -- the idle interpreter: qemu's overhead alone ------------------------------------------------
async def idle_overhead(root: Path, seconds: float = 25.0) -> dict[str, Any]:
    code = f"import time; time.sleep({seconds})"
    argv = chroot_script(root, ["python3", "-c", code], {"QEMU_RESERVED_VA": hex(RESERVED_VA)})
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL)
    emu_pid = await guest_pid(proc.pid)
    native = await asyncio.create_subprocess_exec(NATIVE_PYTHON, "-c", code)
    await asyncio.sleep(seconds - 5)
    split = split_smaps(emu_pid) or {}
    raw = rss_kb(emu_pid)
    native_kb = rss_kb(native.pid)
    await proc.wait()
    await native.wait()
    return {
        "what": f"python3 -c '{code}', sampled after {seconds - 5:.0f} s",
        "native_x86_64_kb": native_kb,
        "native_python": f"{NATIVE_PYTHON}: {_run(NATIVE_PYTHON, '-V').stdout.strip()}",
        "qemu_raw_kb": raw,
        "qemu_guest_kb": split.get("guest_kb"),
        "qemu_own_kb": split.get("qemu_kb"),
        "qemu_mappings_inside_guest_window": split.get("qemu_mappings_inside_guest_window"),
    }


async def guest_pid(parent: int, timeout: float = 30.0) -> int:
    """The child of ``unshare --fork``: it execs chroot, env and then the arm64 program."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    return int(stat.parent.name)
        await asyncio.sleep(0.1)
    raise RuntimeError("the process inside the arm64 root did not start")


# -- one run of the pipeline ------------------------------------------------------------------
def scrape_totals(port: int) -> dict[str, float] | None:
    """Every counter of the status page's /metrics summed over its labels (dropped frames by
    reason kept apart); None while the page is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    out: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"^(spyoncino_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if not m:
            continue
        name = m.group(1)
        if not name.endswith(("_total", "_seconds_sum", "_seconds_count")):
            continue
        if name == "spyoncino_camera_frames_dropped_total" and m.group(2):
            reason = re.search(r'reason="([^"]*)"', m.group(2))
            name += f":{reason.group(1) if reason else ''}"
        out[name] += float(m.group(3))
    return dict(out)


#: what a variant changes on top of the package defaults
VARIANTS: dict[str, dict[str, Any]] = {
    # the defaults as detected: no device tree in the root, so the generic profile, as the
    # x86-64 figures of rss.json (same footage, same profile: the like-for-like comparison)
    "defaults": {},
    # under emulation an inference takes seconds (wall, on this shared box: 5-15 s), longer
    # than the 5 s a track waits for its next sighting, so no track is ever confirmed and no
    # event, snapshot, clip, animation or alert happens; this keeps tracks for 60 s so the
    # event side runs and its memory is in the figure
    "events": {"tracker": {"end_after_s": 60.0}},
    # as a Pi 4 would run it (its profile: 32 MB camera buffer, 3 workers, 4 detector threads)
    "pi-4-events": {"runtime": {"hardware_profile": "pi-4"}, "tracker": {"end_after_s": 60.0}},
}
#: the default plan: footage:variant
RUNS = "sample:defaults,720p:defaults,720p:events,720p:pi-4-events"


def _mb(kb: float) -> float:
    return round(kb / 1024, 1)


async def measure(
    root: Path, label: str, source: str, variant: str, duration_s: float
) -> dict[str, Any]:
    run_dir = WORK / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    emu = BotApiEmulator()
    await emu.start()
    port = free_port()
    write_config(run_dir, 1, source, emu, port, root="/srv/run/root", extra=VARIANTS[variant])
    load_before = os.getloadavg()[0]
    argv = chroot_script(
        root,
        ["/srv/venv/bin/spyoncino", "run", "--config", "/srv/run/config.yaml", "--forever"],
        {"QEMU_RESERVED_VA": hex(RESERVED_VA)},
    )
    log = (run_dir / "service.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    t0 = time.monotonic()
    pid = await guest_pid(proc.pid)
    samples: list[dict[str, Any]] = []
    first_frame_s: float | None = None
    metrics: dict[str, float] | None = None
    sends = 0
    next_scrape = 0.0
    last: dict[str, Any] | None = None
    try:
        while time.monotonic() - t0 < duration_s and proc.returncode is None:
            now = time.monotonic() - t0
            split = split_smaps(pid)
            raw = rss_kb(pid)
            if split is not None and raw is not None:
                samples.append({"t": now, "raw": raw, "guest": split["guest_kb"]})
                last = split
            if now >= next_scrape:
                next_scrape = now + SCRAPE_EVERY_S
                got = scrape_totals(port)
                if got is not None:
                    metrics = got
                    if first_frame_s is None and got.get("spyoncino_camera_frames_decoded_total"):
                        first_frame_s = now
            sends += sum(1 for c in emu.calls if c.method.startswith("send"))
            emu.calls.clear()  # the emulator keeps uploads; this process is not measured
            await asyncio.sleep(SAMPLE_EVERY_S)
        metrics = scrape_totals(port) or metrics
        cpu = proc_cpu(pid) if proc.returncode is None else None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await proc.wait()
        log.close()
        await emu.stop()
    if not samples or last is None:
        tail = (run_dir / "service.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{label}: the service exited at once ({proc.returncode}):\n{tail}")
    media = collections.Counter(
        p.suffix for p in (run_dir / "root").rglob("*") if p.is_file() and p.suffix
    )
    t_end = samples[-1]["t"]
    start_at = (first_frame_s or 0.0) + START_AFTER_FIRST_FRAME_S

    def figures(key: str) -> dict[str, float]:
        values = [s[key] for s in samples]
        minute = [s[key] for s in samples if s["t"] >= t_end - 60] or values
        return {
            "start_mb": _mb(next((s[key] for s in samples if s["t"] >= start_at), values[-1])),
            "peak_mb": _mb(max(values)),
            "steady_mb": _mb(statistics.median(minute)),
            "end_mb": _mb(statistics.median(values[-5:])),
        }

    m = metrics or {}
    decoded = m.get("spyoncino_camera_frames_decoded_total", 0.0)
    dropped = {
        k.split(":", 1)[1]: v
        for k, v in m.items()
        if k.startswith("spyoncino_camera_frames_dropped_total:") and v
    }
    inferences = m.get("spyoncino_inference_latency_seconds_count", 0.0)
    return {
        "footage": label,
        "source": source,
        "variant": variant,
        "config_changes": VARIANTS[variant],
        "load_avg_1min_start_end": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "measured_s": round(t_end, 1),
        "first_frame_after_s_emulated": round(first_frame_s, 1) if first_frame_s else None,
        "raw_qemu_process": figures("raw"),
        "guest_estimate": figures("guest"),
        "qemu_own_at_end_mb": {k: _mb(v) for k, v in last["qemu_kb"].items()},
        "guest_top_mappings_at_end_mb": last["guest_top_mb"],
        "qemu_mappings_inside_guest_window": last["qemu_mappings_inside_guest_window"],
        "pipeline": {
            "frames_decoded": decoded,
            "frames_dropped_by_reason": dropped,
            "inferences": inferences,
            "inference_mean_ms_emulated": (
                round(1000 * m.get("spyoncino_inference_latency_seconds_sum", 0) / inferences)
                if inferences
                else None
            ),
            "detections": m.get("spyoncino_detections_total"),
            "events": m.get("spyoncino_events_total"),
            "media_files_by_suffix": dict(media),
            "telegram_sends": sends,
        },
        "cpu_s_emulated": round(cpu, 1) if cpu is not None else None,
        "exit_code": proc.returncode,
        "timeline_s_raw_guest_mb": [
            [round(s["t"]), _mb(s["raw"]), _mb(s["guest"])]
            for s in samples
            if int(s["t"]) % 30 in (0, 1)
        ],
    }


def x86_reference() -> dict[str, Any] | None:
    try:
        doc = json.loads((RESULTS / "rss.json").read_text())
    except (OSError, ValueError):
        return None
    run = next((r for r in doc.get("runs", []) if r.get("cameras") == 1), None)
    if run is None:
        return None
    keys = ("start_mb", "peak_mb", "steady_mb", "end_mb", "measured_s")
    return {"from": f"bench/results/rss.json ({doc.get('at')})", **{k: run[k] for k in keys}}


async def main_async(duration: float, plan: list[tuple[str, str]]) -> None:
    root = arm64_root()
    wheel = prepare_venv(root)
    media = WORK / "media"
    media.mkdir(exist_ok=True)
    sources: dict[str, tuple[str, str]] = {}
    for name in {f for f, _ in plan}:
        if name == "sample":  # the packaged clip, from the wheel
            sources["sample"] = ("sample (packaged clip)", "spyoncino:sample.mp4")
        else:
            src = footage_720p()
            dst = media / src.name
            if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
                shutil.copy(src, dst)
            sources["720p"] = (f"720p ({src.name})", f"/srv/media/{src.name}")
    idle = await idle_overhead(root)
    runs = [await measure(root, *sources[f], v, duration) for f, v in plan]
    write_result(
        "arm64",
        {
            "how": (
                "spyoncino run --forever in a Debian bookworm arm64 root under qemu-user "
                f"({_run('qemu-aarch64-static', '--version').stdout.splitlines()[0]}), the "
                "Pi venv (picamera2 constraints), package defaults, 1 looping file camera, "
                "Telegram into the local emulator; QEMU_RESERVED_VA=512 GiB so guest and qemu "
                "mappings are told apart in /proc/<pid>/smaps"
            ),
            "wheel": wheel,
            "sample_clip_bytes": SAMPLE.stat().st_size,
            "duration_s_per_run": duration,
            "start_means": f"RSS {START_AFTER_FIRST_FRAME_S:.0f} s after the first decoded frame",
            "cpu_note": (
                "cpu_s_emulated is qemu's CPU time on this x86-64 machine: emulated, not a Pi "
                "figure. CPU figures on a real Pi are to be measured."
            ),
            "idle_overhead": idle,
            "runs": runs,
            "x86_64_one_camera_720p": x86_reference(),
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds per run")
    ap.add_argument(
        "--runs",
        default=RUNS,
        help=f"footage:variant pairs, comma-separated; footage sample or 720p, variant of "
        f"{', '.join(VARIANTS)} (default {RUNS})",
    )
    args = ap.parse_args()
    plan = [tuple(r.split(":", 1)) for r in args.runs.split(",")]
    for r in plan:
        if len(r) != 2 or r[0] not in ("sample", "720p") or r[1] not in VARIANTS:
            raise SystemExit(f"bad run {':'.join(r)!r} (footage:variant)")
    if os.geteuid() != 0:  # make bench runs every bench: this one skips, saying why
        print("bench_arm64: skipped: needs root (mount namespace, chroot)")
        return
    asyncio.run(main_async(args.duration, [(f, v) for f, v in plan]))


if __name__ == "__main__":
    main()
