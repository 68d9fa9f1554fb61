"""A Raspberry Pi OS-style venv, for real on arm64 under emulation: the picamera2 constraints.

On a Pi with a CSI camera the venv sees apt's packages (``--system-site-packages``, for
python3-picamera2) and is installed with ``spyoncino/data/constraints/picamera2.txt`` (numpy 1,
OpenCV < 4.12), the combination apt's picamera2 needs. Raspberry Pi's archive is not reachable
here and Debian has no picamera2, so this builds that venv in a Debian bookworm arm64 root
(``build_arm64_root.sh``, cached) and runs it through qemu-user: pip inside the root installs
the wheel offline from an aarch64 wheelhouse resolved with the constraints (cached in
``.cache/arm64``), then ``import spyoncino, cv2, numpy, ai_edge_litert`` runs and LiteRT
invokes the shipped int8 model once. An arm64 ``/proc/cpuinfo`` is bound over the host's,
without which LiteRT crashes under qemu-user.

Needs root, mmdebstrap and the qemu-aarch64 binfmt handler (qemu-user-static, binfmt-support;
the build script enables it, and the test skips saying so when it cannot); the first run needs
the package index and Debian's mirror (about 2.5 min to build the root, 30 s for the wheels).
Runs with ``make test-system``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.system.test_pi_constraints import CONSTRAINTS, PI

pytestmark = [
    pytest.mark.system,
    # a cold root (mmdebstrap under qemu-user) took over 300 s beside the image build in CI;
    # each step has its own subprocess timeout, this only stops a hang
    pytest.mark.timeout(2400),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, mount namespaces)"),
    pytest.mark.skipif(
        shutil.which("mmdebstrap") is None or shutil.which("unshare") is None,
        reason="needs mmdebstrap and unshare (apt-get install mmdebstrap util-linux)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "arm64"
CPUINFO = REPO / "image" / "files" / "cpuinfo-arm64"
CHECK = """
import json, sys
from pathlib import Path
import numpy, cv2, ai_edge_litert, spyoncino
from spyoncino.modules.process._backends import open_backend
model = Path(spyoncino.__file__).parent / "data/models/coco_nanodet_m_416_int8.tflite"
b = open_backend(model, backend="litert", num_threads=1)
outs = b.invoke(numpy.zeros(b.inputs[0].shape, dtype=b.inputs[0].dtype))
print(json.dumps({"numpy": numpy.__version__, "cv2": cv2.__version__, "backend": b.name,
                  "outputs": len(outs), "spyoncino": spyoncino.__version__,
                  "numpy_from": numpy.__file__, "machine": __import__("platform").machine(),
                  "system_site": sys.flags.no_site == 0 and any("dist-packages" in p
                                                                  for p in sys.path)}))
"""


def _run(*argv: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _wheelhouse(wheel: Path) -> Path:
    """aarch64 wheels of every dependency, resolved with the picamera2 constraints (cached)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = sorted(
            line
            for line in z.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        )
    key = hashlib.sha256("\n".join([*requires, CONSTRAINTS.read_text(), *PI]).encode()).hexdigest()[
        :12
    ]
    house = CACHE / f"wheels-{key}"
    if (house / ".complete").exists():
        return house
    shutil.rmtree(house, ignore_errors=True)
    house.mkdir(parents=True)
    # sdnotify is an sdist only: its pure-Python wheel is built here, as the image build does
    sd = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(house), "sdnotify")
    if sd.returncode != 0:
        pytest.skip(f"no package index for sdnotify:\n{sd.stderr[-600:]}")
    # the image build's aarch64 wheelhouse holds most of them already
    links = [a for d in (REPO / ".cache" / "image").glob("wheelhouse-*") for a in ("-f", str(d))]
    got = _run(
        sys.executable, "-m", "pip", "download", "-q", "-d", str(house), "-f", str(house),
        "-f", str(wheel.parent), *links, *PI, "-c", str(CONSTRAINTS), str(wheel),
    )  # fmt: skip
    if got.returncode != 0:
        pytest.skip(f"no package index for the aarch64 wheels:\n{got.stderr[-800:]}")
    for w in house.glob("spyoncino-*.whl"):
        w.unlink()
    (house / ".complete").touch()
    for old in CACHE.glob("wheels-*"):
        if old != house:
            shutil.rmtree(old, ignore_errors=True)
    return house


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    built = _run("bash", str(REPO / "tests" / "system" / "build_arm64_root.sh"))
    if built.returncode == 3:
        pytest.skip(built.stderr.strip())
    assert built.returncode == 0, built.stderr[-3000:]
    root = Path(dict(x.split("=", 1) for x in built.stdout.split() if "=" in x)["ROOTFS"])
    work = tmp_path_factory.mktemp("arm64")
    dist = work / "dist"
    out = _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", str(dist), str(REPO),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = dist.glob("spyoncino-*.whl")
    house = _wheelhouse(wheel)
    shutil.copy(CONSTRAINTS, work / "constraints.txt")
    (work / "check.py").write_text(CHECK)
    inside = (
        "set -e; python3 -m venv --system-site-packages /srv/venv; "
        "/srv/venv/bin/pip install -q --no-compile --no-index -f /srv/wheels "
        "-c /srv/constraints.txt "
        f"/srv/dist/{wheel.name}; /srv/venv/bin/python /srv/check.py"
    )
    # a private mount namespace: /proc, the arm64 cpuinfo and the work folder are bound into
    # the cached root only for this run, which leaves it untouched
    script = f"""set -e
mount -t proc proc '{root}/proc'
mount --bind '{CPUINFO}' '{root}/proc/cpuinfo'
mount --bind '{work}' '{root}/srv'
mkdir -p '{root}/srv/wheels' && mount --bind -o ro '{house}' '{root}/srv/wheels'
exec chroot '{root}' /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
  PIP_DISABLE_PIP_VERSION_CHECK=1 /bin/sh -c '{inside}'
"""
    ran = _run("unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    got: dict[str, object] = json.loads(ran.stdout.strip().splitlines()[-1])
    print(f"arm64 venv under qemu-user: {got}")  # shown with -s
    return got


def test_it_really_ran_on_arm64_with_system_site_packages(result: dict[str, object]) -> None:
    assert result["machine"] == "aarch64", result
    assert result["system_site"], result  # the venv sees apt's dist-packages, as on a Pi


def test_the_constrained_venv_keeps_numpy_1_and_an_opencv_that_accepts_it(
    result: dict[str, object],
) -> None:
    assert str(result["numpy"]).startswith("1."), result
    major, minor = (int(x) for x in str(result["cv2"]).split(".")[:2])
    assert (major, minor) < (4, 12), result
    assert "/srv/venv/" in str(result["numpy_from"]), result  # the venv's numpy, not apt's


def test_litert_runs_the_shipped_model_in_that_venv(result: dict[str, object]) -> None:
    assert result["backend"] == "litert", result
    assert result["outputs"], result
