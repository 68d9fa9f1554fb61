"""Every package extra installs into a fresh venv and its backend imports and runs here.

One venv (Python 3.11, this machine's x86-64) gets the wheel with every extra that can install
on it: ``tflite``, ``coral``, ``onnx``, ``mqtt``, ``email``, ``mdns``. Wheels are fetched once
into ``.cache/extras`` (the system tests' offline wheelhouse is reused when it is there) and
installed with ``--no-index``, so a second run needs no package index. Each test then runs, in
that venv, what the detector or the module does with the library: the shipped int8 model
invoked on tflite-runtime (which needs numpy 1: the extra pins it), the Edge TPU delegate
refused with the message naming ``libedgetpu1-std`` (no accelerator here), ONNX Runtime on
CPU, the MQTT, e-mail and mDNS libraries imported by the modules that use them.

``jetson`` is not installed: PyPI's ``onnxruntime-gpu`` is the 300 MB x86-64 CUDA build, and
for a Jetson (aarch64) PyPI has none at all; the test resolves both and checks exactly that,
which is what docs/install.md says (NVIDIA's Jetson AI Lab index, JetPack). There is no ``pi``
extra: picamera2 comes from Raspberry Pi OS's apt (test_arm64_imports.py covers that venv).
Needs a package index on the first run (CI has it), so it runs with ``make test-system``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "extras"
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
#: installed into the venv and exercised below (s3 once the package declares it)
INSTALLED = tuple(
    e for e in ("tflite", "coral", "onnx", "mqtt", "email", "mdns", "s3") if e in EXTRAS
)
#: tooling, not something a board runs
NOT_RUNTIME = ("ansible", "dev")
MODEL = REPO / "spyoncino" / "data" / "models" / "coco_nanodet_m_416_int8.tflite"
SHARED_ONNX = REPO.parent / "shared" / "models" / "person_ssdlite_mobilenet_v2.onnx"


def _run(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return sorted(line for line in lines if line.startswith("Requires-Dist:"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("extras")
    built = _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", str(tmp / "dist"), str(REPO),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("spyoncino-*.whl")
    want = f"{wheel}[{','.join(INSTALLED)}]"
    key = hashlib.sha256(
        "\n".join([*_requires(wheel), *INSTALLED, sys.platform, os.uname().machine]).encode()
    ).hexdigest()[:12]
    wheels = CACHE / f"wheels-{key}"
    if not (wheels / ".complete").exists():
        links = [a for d in (REPO / ".cache" / "system").glob("wheelhouse-*") for a in ("-f", d)]
        # pip wheel, not download: sdnotify is an sdist only, and --no-index needs a wheel
        got = _run(
            sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), *map(str, links), want
        )
        if got.returncode != 0:
            pytest.skip(f"no package index to fetch the extras' wheels from:\n{got.stderr[-800:]}")
        for w in wheels.glob("spyoncino-*.whl"):
            w.unlink()
        (wheels / ".complete").touch()
        for old in CACHE.glob("wheels-*"):
            if old != wheels:
                subprocess.run(["rm", "-rf", str(old)], check=False)
    py = tmp / "venv" / "bin" / "python"
    assert _run(sys.executable, "-m", "venv", str(tmp / "venv")).returncode == 0
    inst = _run(str(py), "-m", "pip", "install", "-q", "--no-index", "-f", str(wheels), want)
    assert inst.returncode == 0, inst.stderr[-3000:]
    return py


def _in(venv: Path, code: str) -> dict[str, object]:
    out = _run(str(venv), "-c", code, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_every_extra_is_tested_or_documented_here() -> None:
    assert set(EXTRAS) == {*INSTALLED, "jetson", *NOT_RUNTIME}, sorted(EXTRAS)
    docs = (REPO / "docs" / "install.md").read_text()
    for name in set(EXTRAS) - set(NOT_RUNTIME):
        assert f"`{name}`" in docs, f"docs/install.md does not say what the {name} extra needs"


def test_tflite_extra_runs_the_shipped_model_on_tflite_runtime(venv: Path) -> None:
    got = _in(
        venv,
        f"""
import json, numpy as np
from pathlib import Path
from spyoncino.modules.process._backends import open_backend
b = open_backend(Path({str(MODEL)!r}), backend="tflite", num_threads=1)
shape = b.inputs[0].shape
outs = b.invoke(np.zeros(shape, dtype=b.inputs[0].dtype))
print(json.dumps({{"name": b.name, "numpy": np.__version__, "outputs": len(outs)}}))
""",
    )
    assert got["name"] == "tflite", got  # tflite-runtime, not LiteRT
    assert str(got["numpy"]).startswith("1."), got  # what tflite-runtime is built against
    assert got["outputs"], got


def test_coral_extra_says_what_to_install_without_an_edge_tpu(venv: Path) -> None:
    got = _in(
        venv,
        f"""
import json
from pathlib import Path
from spyoncino.modules.process._backends import BackendError, open_backend
try:
    open_backend(Path({str(MODEL)!r}), backend="edgetpu", num_threads=1)
    print(json.dumps({{"error": None}}))
except BackendError as e:
    import tflite_runtime
    print(json.dumps({{"error": str(e), "tflite_runtime": tflite_runtime.__version__}}))
""",
    )
    if got["error"] is None:
        pytest.skip("an Edge TPU and libedgetpu are present on this machine")
    assert "libedgetpu1-std" in str(got["error"]), got


def test_onnx_extra_runs_on_onnx_runtime_cpu(venv: Path) -> None:
    got = _in(
        venv,
        f"""
import json, numpy as np
from pathlib import Path
import onnxruntime
res = {{"providers": onnxruntime.get_available_providers()}}
model = Path({str(SHARED_ONNX)!r})
if model.exists():
    from spyoncino.modules.process._backends import open_backend
    b = open_backend(model, backend="onnx", num_threads=1)
    shape = [d if d > 0 else 1 for d in b.inputs[0].shape]
    res["name"] = b.name
    res["outputs"] = len(b.invoke(np.zeros(shape, dtype=b.inputs[0].dtype)))
print(json.dumps(res))
""",
    )
    assert "CPUExecutionProvider" in got["providers"], got  # type: ignore[operator]
    if "name" in got:
        assert got["name"] == "onnx-cpu" and got["outputs"], got


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ("mqtt", "import aiomqtt; from spyoncino.modules.output.mqtt import MqttOutput"),
        ("email", "import aiosmtplib; from spyoncino.modules.output.email import EmailOutput"),
        ("mdns", "from zeroconf.asyncio import AsyncZeroconf; "
                 "from spyoncino.modules.dashboard.status_page import _mdns"),
        ("s3", "from aiobotocore.session import get_session"),
    ],
)  # fmt: skip
def test_module_extras_import(venv: Path, extra: str, code: str) -> None:
    if extra not in EXTRAS:
        pytest.skip(f"the package declares no {extra} extra")
    assert _in(venv, code + "; import json; print(json.dumps({}))") == {}, extra


def _resolve(*platform: str) -> subprocess.CompletedProcess[str]:
    return _run(
        sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--no-deps",
        "--ignore-installed", "--only-binary=:all:", "--target", "/nonexistent",
        "--python-version", "3.11", "--implementation", "cp", *platform,
        "onnxruntime-gpu>=1.17", timeout=300,
    )  # fmt: skip


def test_jetson_extra_needs_nvidias_index_on_aarch64() -> None:
    x86 = _resolve("--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64")
    if x86.returncode != 0:
        pytest.skip(f"no package index to resolve onnxruntime-gpu against:\n{x86.stderr[-500:]}")
    arm = _resolve(
        *[a for n in (17, 27, 28, 31, 35) for a in ("--platform", f"manylinux_2_{n}_aarch64")]
    )
    # PyPI has no aarch64 onnxruntime-gpu: on a Jetson the extra resolves only with NVIDIA's
    # index (spyoncino_pip_extra_index_url), and the role says so before pip fails
    assert arm.returncode != 0, "PyPI now has an aarch64 onnxruntime-gpu: update docs/install.md"
    assert "No matching distribution" in arm.stderr, arm.stderr[-1000:]
