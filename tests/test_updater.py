"""The A/B updater's logic, without systemd: resolve, verify, build, gate, probation, recovery.

A fake ``Host`` stands in for venv/pip (it lays out a slot the way pip would), the gate's
commands and systemd (a scripted service); everything on disk is real, under tmp_path.
The same code runs for real in tests/system/test_updates.py.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import sys
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from spyoncino import updater as up
from spyoncino.updater import Paths, Release, Settings, UpdateError, Updater


# -- releases and an index on disk ------------------------------------------------------------
def make_wheel(folder: Path, version: str, constraints: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"spyoncino-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("spyoncino/__init__.py", f'__version__ = "{version}"\n')
        z.writestr("spyoncino/updater.py", f"# updater of {version}\n")
        if constraints is not None:
            z.writestr("spyoncino/data/constraints/release.txt", constraints)
            z.writestr("spyoncino/data/constraints/picamera2.txt", "numpy<2\n")
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_index(root: Path, wheels: Sequence[Path], *, bad_hash: Sequence[str] = ()) -> str:
    page = root / "simple" / "spyoncino"
    page.mkdir(parents=True, exist_ok=True)
    links = []
    for w in wheels:
        shutil.copy(w, page / w.name)
        digest = "0" * 64 if w.name.split("-")[1] in bad_hash else sha(w)
        links.append(f'<a href="{w.name}#sha256={digest}">{w.name}</a>')
    (page / "index.html").write_text("<html><body>" + "\n".join(links) + "</body></html>")
    return (root / "simple").as_uri()


# -- a scripted host --------------------------------------------------------------------------
class FakeHost(up.Host):
    """venv/pip lay out files; the gate answers from ``gate``; systemd follows ``service``."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.calls: list[list[str]] = []
        self.gate: dict[str, tuple[int, str]] = {}
        self.pip_rc = 0
        #: what the restarted service does: ok | crash | never_ready | restarts | unhealthy
        self.behaviour = "ok"
        self.restarted_at: float | None = None
        self.synced = 0

    def run(
        self, argv: Sequence[str], *, user: str | None = None, timeout: float = 600.0
    ) -> tuple[int, str]:
        argv = list(argv)
        self.calls.append(argv)
        if argv[1:3] == ["-m", "venv"]:
            slot = Path(argv[-1])
            (slot / "bin").mkdir(parents=True)
            (slot / "bin" / "python").write_text("")
            return 0, ""
        if argv[1:4] == ["-m", "pip", "install"]:
            if self.pip_rc:
                return self.pip_rc, "ERROR: No matching distribution found for numpy"
            slot = Path(argv[0]).parents[1]
            if "--requirement" in argv:  # the release lock: the wheel is its first line
                first = Path(argv[argv.index("--requirement") + 1]).read_text().splitlines()[0]
                wheel = Path(first.split(" @ file://")[1].split(" ")[0])
            else:
                wheel = Path(argv[-1].split("[")[0])
            version = wheel.name.split("-")[1]
            (slot / "bin" / "spyoncino").write_text(version)
            pkg = slot / "lib" / "python3.11" / "site-packages" / "spyoncino"
            pkg.mkdir(parents=True)
            (pkg / "updater.py").write_text(f"# updater of {version}\n")
            return 0, "Successfully installed"
        if argv[0].endswith("/bin/spyoncino"):
            return self.gate.get(argv[1], (0, f"{argv[1]} ok"))
        return 0, ""

    def systemctl(self, *args: str) -> tuple[int, str]:
        self.calls.append(["systemctl", *args])
        if args[0] == "restart":
            self.restarted_at = self.now
        return 0, ""

    def show(self, unit: str) -> dict[str, str]:
        props = self._show()
        if props.pop("stale", None):  # the old run: the id it had before this restart
            props["InvocationID"] = f"run{self.restarts() - 1}"
        else:
            props["InvocationID"] = f"run{self.restarts()}"
        return props

    def _show(self) -> dict[str, str]:
        if self.restarted_at is None:
            return {
                "ActiveState": "active",
                "SubState": "running",
                "MainPID": "10",
                "NRestarts": "0",
                "LoadState": "loaded",
            }
        t = self.now - self.restarted_at
        b = self.behaviour
        if t < 1:  # the restart job has not begun: systemd still shows the old run
            return {
                "ActiveState": "active",
                "SubState": "running",
                "MainPID": "10",
                "NRestarts": "0",
                "stale": "yes",
            }
        if b == "crash" and t >= 2:
            return {"ActiveState": "activating", "SubState": "auto-restart", "Result": "exit-code"}
        if b == "never_ready" or t < 2:
            return {"ActiveState": "activating", "SubState": "start", "MainPID": "20"}
        if b == "restarts" and t >= 5:
            return {
                "ActiveState": "active",
                "SubState": "running",
                "MainPID": "21",
                "NRestarts": "1",
                "Result": "watchdog",
            }
        return {
            "ActiveState": "active",
            "SubState": "running",
            "MainPID": "20",
            "NRestarts": "0",
            "LoadState": "loaded",
        }

    def healthy(self, url: str, timeout: float = 3.0) -> bool:
        return self.behaviour != "unhealthy" and self.restarted_at is not None

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def sync(self) -> None:
        self.synced += 1

    def restarts(self) -> int:
        return sum(1 for c in self.calls if c[:2] == ["systemctl", "restart"])


@pytest.fixture
def box(tmp_path: Path) -> Callable[..., Updater]:
    paths = Paths(tmp_path / "opt", tmp_path / "state", tmp_path / "exchange")
    paths.exchange.mkdir(parents=True)
    host = FakeHost()

    def make(**settings: Any) -> Updater:
        s = Settings(probation_s=10, config=str(tmp_path / "config.yaml"), **settings)
        return Updater(paths, s, host, clock=lambda: host.now)

    return make


def installed(u: Updater, version: str, tmp_path: Path) -> None:
    """A box running ``version`` in slot a, marked good (as after a first install)."""
    wheel = make_wheel(tmp_path / "local", version)
    result = u.install(version, pin=False, start=False, wheel=str(wheel))
    assert result.code == 0, result.message
    assert u.active_slot() == "a"


# -- versions and the simple page -------------------------------------------------------------
def test_versions_sort_as_pep_440_says() -> None:
    order = [
        "0.1.0.dev1",
        "0.1.0a1",
        "0.1.0b2",
        "0.1.0rc1",
        "0.1.0",
        "0.1.0.post1",
        "0.1.1",
        "0.2",
        "0.10.0",
        "1.0.0",
    ]
    assert sorted(order, key=up.version_key) == order
    assert up.version_key("1.0") == up.version_key("1.0.0")
    assert up.is_prerelease("0.2.0rc1") and not up.is_prerelease("0.2.0")
    with pytest.raises(ValueError, match="not a version"):
        up.version_key("latest")


def test_wheel_names_are_parsed_strictly() -> None:
    assert up.wheel_version("spyoncino-0.1.1-py3-none-any.whl") == "0.1.1"
    assert up.wheel_version("Spyoncino-0.1.1-1-py3-none-any.whl") == "0.1.1"
    assert up.wheel_version("spyoncino-0.1.1.tar.gz") is None
    assert up.wheel_version("numpy-2.0-cp311-cp311-manylinux_2_17_x86_64.whl") is None
    assert up.wheel_version("spyoncino-0.1.1-cp311-cp311-linux_x86_64.whl") is None
    assert up.wheel_version("spyoncino-main-py3-none-any.whl") is None


def test_simple_page_links_hashes_and_yanked_files() -> None:
    h = "ab" * 32
    page = f"""<html><body>
      <a href="../../files/spyoncino-0.1.0-py3-none-any.whl#sha256={h}">0.1.0</a>
      <a href="spyoncino-0.1.1-py3-none-any.whl">no hash</a>
      <a href="spyoncino-0.1.2-py3-none-any.whl#sha256={h}" data-yanked="broken">yanked</a>
      <a href="spyoncino-0.1.3.tar.gz#sha256={h}">sdist</a>
      <a href="https://elsewhere.invalid/x/spyoncino-0.2.0rc1-py3-none-any.whl#md5=1&sha256={h}">rc</a>
      <a>no href</a>
    </body></html>"""
    rel = up.parse_simple_page(page, "http://127.0.0.1:1/simple/spyoncino/")
    assert [(r.version, r.sha256) for r in rel] == [("0.1.0", h), ("0.1.1", None), ("0.2.0rc1", h)]
    assert rel[0].url == "http://127.0.0.1:1/files/spyoncino-0.1.0-py3-none-any.whl"
    assert up.choose(rel, None).version == "0.1.1"  # type: ignore[union-attr]
    assert up.choose(rel, None, pre=True).version == "0.2.0rc1"  # type: ignore[union-attr]
    assert up.choose(rel, "0.1").version == "0.1.0"  # type: ignore[union-attr]
    assert up.choose(rel, "9.9") is None


def test_index_over_http_404_and_unreachable(tmp_path: Path) -> None:
    url = make_index(tmp_path, [make_wheel(tmp_path / "w", "0.1.0")])
    root = Path(url.removeprefix("file://"))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(root.parent), **k)

        def log_message(self, *a: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/simple"
        assert [r.version for r in up.fetch_index(base)] == ["0.1.0"]
        assert up.fetch_index(base, package="nothing-here") == []
        assert up.Host().healthy(f"http://127.0.0.1:{server.server_address[1]}/simple/")
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(UpdateError, match="unreachable") as e:
        up.fetch_index(base, timeout=2)
    assert e.value.code == up.EXIT_UNREACHABLE
    assert not up.Host().healthy(base, timeout=1)
    with pytest.raises(UpdateError, match="not http"):
        up.fetch_index("ftp://127.0.0.1/simple")


def test_download_checks_the_sha256_and_refuses_links_without_one(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w", "0.1.1")
    good = Release("0.1.1", wheel.as_uri(), wheel.name, sha(wheel))
    got = up.download(good, tmp_path / "dl")
    assert got.read_bytes() == wheel.read_bytes()
    assert up.download(good, tmp_path / "dl") == got  # already there and verified
    bad = Release("0.1.1", wheel.as_uri(), wheel.name, "0" * 64)
    with pytest.raises(UpdateError, match="does not match") as e:
        up.download(bad, tmp_path / "dl2")
    assert e.value.code == up.EXIT_HASH
    assert list((tmp_path / "dl2").iterdir()) == []  # nothing half-verified is left
    with pytest.raises(UpdateError, match="no sha256") as e:
        up.download(Release("0.1.1", wheel.as_uri(), wheel.name, None), tmp_path / "dl3")
    assert e.value.code == up.EXIT_HASH
    gone = Release("0.1.1", (tmp_path / "missing.whl").as_uri(), "x.whl", "0" * 64)
    with pytest.raises(UpdateError, match="download") as e:
        up.download(gone, tmp_path / "dl4")
    assert e.value.code == up.EXIT_UNREACHABLE


def test_symlink_switch_is_a_rename_and_keeps_an_old_venv_dir(tmp_path: Path) -> None:
    link = tmp_path / "current"
    up.symlink_atomic(link, "slots/a")
    up.symlink_atomic(link, "slots/b")
    assert os.readlink(link) == "slots/b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]  # no temp link left
    paths = Paths(tmp_path / "opt", tmp_path / "st", tmp_path / "ex")
    (paths.root / "venv" / "bin").mkdir(parents=True)
    u = Updater(paths, Settings(), FakeHost())
    u.switch("a")
    assert (paths.root / "venv").is_dir() and not (paths.root / "venv").is_symlink()
    shutil.rmtree(paths.root / "venv")
    u.switch("b")
    assert os.readlink(paths.root / "venv") == "current"
    assert os.readlink(paths.current) == "slots/b"


def test_settings_load_coerces_what_ansible_wrote(tmp_path: Path) -> None:
    f = tmp_path / "update.json"
    f.write_text(
        json.dumps(
            {
                "no_index": "True",
                "probation_s": "30.0",
                "extras": ["onnx"],
                "find_links": "x",
                "index_url": "http://127.0.0.1/simple",
                "unknown": 1,
            }
        )
    )
    s = Settings.load(f)
    assert (s.no_index, s.probation_s, s.extras, s.find_links) == (True, 30.0, ["onnx"], [])
    assert Settings.load(tmp_path / "missing.json") == Settings()


# -- updates ----------------------------------------------------------------------------------
def test_good_update_builds_the_other_slot_then_marks_it_good(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.1", "numpy==2.0\n")])
    result = u.update(index_url=url)
    assert (result.code, result.outcome, result.switched) == (0, "updated", True)
    assert result.message == "updated 0.1.0 -> 0.1.1: passed probation"
    assert u.active_slot() == "b" and u.is_good("b") and u.is_good("a")
    assert not u.paths.pending.exists()
    assert u.paths.standalone.read_text() == "# updater of 0.1.1\n"
    pip = next(c for c in u.host.calls if c[1:4] == ["-m", "pip", "install"] and "0.1.1" in c[-1])
    assert pip.count("--constraint") == 1  # release.txt; picamera2.txt only with apt's packages
    assert Path(pip[pip.index("--constraint") + 1]).read_text() == "numpy==2.0\n"
    assert u.host.synced >= 1  # type: ignore[attr-defined]
    again = u.update(index_url=url)
    assert (again.code, again.message) == (0, "already up to date (0.1.1)")


def test_a_venv_seeing_apt_packages_gets_the_picamera2_constraints(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box(system_site_packages=True)
    wheel = make_wheel(tmp_path / "l", "0.1.0", "numpy==1.26.4\n")
    assert u.install("0.1.0", pin=False, start=False, wheel=str(wheel)).code == 0
    venv = next(c for c in u.host.calls if c[1:3] == ["-m", "venv"])  # type: ignore[attr-defined]
    assert "--system-site-packages" in venv
    pip = next(c for c in u.host.calls if c[1:4] == ["-m", "pip", "install"])  # type: ignore[attr-defined]
    files = [Path(pip[i + 1]).name for i, a in enumerate(pip) if a == "--constraint"]
    assert files == ["0.1.0-picamera2.txt"]  # not the lock resolved without apt's numpy


# -- the release lock (make dist) and --require-hashes ----------------------------------------
def fake_file(folder: Path, name: str, data: bytes = b"") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data or name.encode())
    return folder / name


def test_a_lock_pins_every_file_and_marks_what_only_some_platforms_need(tmp_path: Path) -> None:
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    fake_file(x86, "Py_YAML-6.0-py3-none-any.whl")
    fake_file(arm, "Py_YAML-6.0-py3-none-any.whl")
    a = fake_file(x86, "numpy-2.0-cp311-cp311-manylinux_2_28_x86_64.whl")
    b = fake_file(arm, "numpy-2.0-cp311-cp311-manylinux_2_28_aarch64.whl")
    c = fake_file(x86, "ai_edge_litert-2.3.0-cp311-cp311-manylinux_2_27_x86_64.whl")
    fake_file(x86, "sdnotify-0.3.2.tar.gz")
    fake_file(x86, "spyoncino-0.1.0-py3-none-any.whl")  # the release itself is never in it
    text = up.make_lock([(x86, "x86_64-cp311"), (arm, "aarch64-cp311")], ["mqtt"])
    lock = up.parse_lock(text)
    assert lock is not None
    assert lock.extras == {"mqtt"} and lock.platforms == {"x86_64-cp311", "aarch64-cp311"}
    by_name = {line.split("==")[0]: line for line in lock.lines}
    assert sorted(by_name) == ["ai-edge-litert", "numpy", "py-yaml", "sdnotify"]
    assert by_name["numpy"] == "numpy==2.0" + "".join(
        f" --hash=sha256:{h}" for h in sorted([sha(a), sha(b)])
    )
    assert by_name["ai-edge-litert"] == (
        'ai-edge-litert==2.3.0 ; (platform_machine == "x86_64" and python_version == "3.11")'
        f" --hash=sha256:{sha(c)}"
    )
    assert by_name["py-yaml"].count("--hash") == 1  # the same file in both
    assert lock.pins().splitlines()[1] == "numpy==2.0"
    # one package, two versions: not a lock
    fake_file(arm, "numpy-2.1-cp311-cp311-manylinux_2_28_aarch64.whl")
    with pytest.raises(ValueError, match=r"numpy: 2\.0 in one wheelhouse, 2\.1"):
        up.make_lock([(x86, "x86_64-cp311"), (arm, "aarch64-cp311")])
    assert up.parse_lock("numpy==2.0\n") is None  # plain pins: a release before locks


def test_a_release_with_a_lock_for_this_box_installs_with_require_hashes(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    dep = fake_file(tmp_path / "wh", "numpy-2.0-py3-none-any.whl")
    lock = up.make_lock([(tmp_path / "wh", up.platform_tag())], ["mqtt"])
    u = box(extras=["mqtt"])
    wheel = make_wheel(tmp_path / "l", "0.1.0", lock)
    assert u.install("0.1.0", pin=False, start=False, wheel=str(wheel)).code == 0
    pip = next(c for c in u.host.calls if c[1:4] == ["-m", "pip", "install"])  # type: ignore[attr-defined]
    assert "--require-hashes" in pip and "--constraint" not in pip
    reqs = Path(pip[pip.index("--requirement") + 1]).read_text().splitlines()
    spec = f"spyoncino[mqtt] @ {wheel.resolve().as_uri()} --hash=sha256:{sha(wheel)}"
    assert reqs == [spec, f"numpy==2.0 --hash=sha256:{sha(dep)}"]
    assert u.slot_info("a")["hashes"] == "release lock (--require-hashes)"


@pytest.mark.parametrize(
    ("lock_for", "extras", "why"),
    [
        ("riscv64-cp399", [], "its lock covers riscv64-cp399, not "),
        (None, ["email"], "its lock does not cover the extras email"),
    ],
)
def test_a_lock_that_does_not_cover_the_box_falls_back_to_the_index_hashes(
    box: Callable[..., Updater], tmp_path: Path, lock_for: str | None, extras: list[str], why: str
) -> None:
    fake_file(tmp_path / "wh", "numpy-2.0-py3-none-any.whl")
    lock = up.make_lock([(tmp_path / "wh", lock_for or up.platform_tag())], ["mqtt"])
    u = box(extras=extras)
    wheel = make_wheel(tmp_path / "l", "0.1.0", lock)
    assert u.install("0.1.0", pin=False, start=False, wheel=str(wheel)).code == 0
    pip = next(c for c in u.host.calls if c[1:4] == ["-m", "pip", "install"])  # type: ignore[attr-defined]
    assert "--require-hashes" not in pip
    # the pins still hold, without the hashes of files this box cannot use
    assert Path(pip[pip.index("--constraint") + 1]).read_text() == "numpy==2.0\n"
    assert u.slot_info("a")["hashes"].startswith(f"index ({why}")


def real_wheel(folder: Path, name: str, version: str, requires: Sequence[str] = ()) -> Path:
    """A minimal wheel pip installs (dist-info with METADATA, WHEEL, RECORD)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{info}/METADATA": meta,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
        z.writestr(f"{info}/RECORD", record)
    return path


def test_pip_refuses_a_dependency_whose_file_is_not_the_one_locked(tmp_path: Path) -> None:
    """Real venv, real pip, offline: the lock make dist writes is what pip checks."""
    wh = tmp_path / "wheelhouse"
    real_wheel(wh, "tinydep", "1.0")
    lock = up.make_lock([(wh, up.platform_tag())])
    release = real_wheel(tmp_path / "rel", "spyoncino", "0.1.0", ["tinydep==1.0"])
    with zipfile.ZipFile(release, "a") as z:
        z.writestr("spyoncino/data/constraints/release.txt", lock)
    paths = Paths(tmp_path / "opt", tmp_path / "state", tmp_path / "ex")
    settings = Settings(python=sys.executable, find_links=[str(wh)], no_index=True)
    u = Updater(paths, settings)
    u.build("a", release, "0.1.0", sha(release))
    assert u.slot_info("a")["hashes"] == "release lock (--require-hashes)"
    assert list(paths.slot("a").glob("lib/python3*/site-packages/tinydep/__init__.py"))
    # the same version of the dependency, another file (a compromised index or folder)
    (wh / "tinydep-1.0-py3-none-any.whl").unlink()
    real_wheel(wh, "tinydep", "1.0", ["six"])
    with pytest.raises(UpdateError, match="DO NOT MATCH THE HASHES") as e:
        u.build("b", release, "0.1.0", sha(release))
    assert e.value.code == up.EXIT_BUILD_FAILED


def test_already_up_to_date_and_no_such_version_are_said_plainly(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.0")])
    calls = len(u.host.calls)  # type: ignore[attr-defined]
    r = u.update(index_url=url)
    assert (r.code, r.message, r.switched) == (0, "already up to date (0.1.0)", False)
    assert len(u.host.calls) == calls  # type: ignore[attr-defined]
    with pytest.raises(UpdateError, match=r"no such version: spyoncino 0.3.0 .*it has 0.1.0") as e:
        u.update("0.3.0", index_url=url)
    assert e.value.code == up.EXIT_NO_SUCH_VERSION
    empty = make_index(tmp_path / "none", [])
    with pytest.raises(UpdateError, match="has no release") as e:
        u.update(index_url=empty)
    with pytest.raises(UpdateError, match="no index and no wheel folder"):
        u.update()
    u.paths.current.unlink()
    with pytest.raises(UpdateError, match="no A/B slots here") as e:
        u.update(index_url=url)
    assert e.value.code == up.EXIT_USAGE


def test_check_changes_nothing(box: Callable[..., Updater], tmp_path: Path) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    url = make_index(
        tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.0"), make_wheel(tmp_path / "w", "0.2.0")]
    )
    before = u.paths.state_file.read_text()
    r = u.check(index_url=url)
    assert (r.code, r.message) == (up.EXIT_NEWER, "newer version available: 0.2.0 (running 0.1.0)")
    same = u.check(index_url=make_index(tmp_path / "i2", [make_wheel(tmp_path / "w2", "0.1.0")]))
    assert (same.message, same.outcome) == ("already up to date (0.1.0)", "up_to_date")
    down = u.check(index_url="http://127.0.0.1:9/simple")
    assert down.code == up.EXIT_UNREACHABLE and "unreachable" in down.message
    assert u.paths.state_file.read_text() == before
    assert u.active_slot() == "a"


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("crash", "failed to start"),
        ("never_ready", "did not become ready"),
        ("restarts", "restarted during probation"),
        ("unhealthy", "did not answer 200"),
    ],
)
def test_failed_probation_switches_back_and_marks_the_version_bad(
    box: Callable[..., Updater], tmp_path: Path, behaviour: str, reason: str
) -> None:
    u = box(health_url="http://127.0.0.1:8080/health/ready")
    installed(u, "0.1.0", tmp_path)
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.2")])
    u.host.behaviour = behaviour  # type: ignore[attr-defined]
    r = u.update(index_url=url)
    assert r.code == up.EXIT_ROLLED_BACK, r.message
    assert reason in r.message and "rolled back to 0.1.0" in r.message
    assert u.active_slot() == "a" and u.active_version() == "0.1.0"
    assert "0.1.2" in u.state["bad"] and not u.is_good("b")
    assert not u.paths.pending.exists()
    assert u.host.restarts() == 2  # type: ignore[attr-defined]  # onto N+1, back onto N
    u.report("update", r)
    told = json.loads(u.paths.result.read_text())
    assert told["outcome"] == "rolled_back" and told["running"] == "0.1.0"
    again = u.update(index_url=url)
    assert again.code == up.EXIT_BAD_VERSION and "not retried" in again.message


def test_gate_failure_installs_nothing(box: Callable[..., Updater], tmp_path: Path) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    (tmp_path / "config.yaml").write_text("cameras: {}\n")
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.4")])
    u.host.gate["selftest"] = (1, "ok   imports\nFAIL detector: boom\nselftest failed\nINFO: x")  # type: ignore[attr-defined]
    r = u.update(index_url=url)
    assert r.code == up.EXIT_GATE_FAILED
    assert "selftest failed (1): FAIL detector: boom;" in r.message
    assert u.active_slot() == "a" and u.host.restarts() == 0  # type: ignore[attr-defined]
    gate = [c for c in u.host.calls if c[0].endswith("/bin/spyoncino")]  # type: ignore[attr-defined]
    assert gate[-2][1:] == ["check-config", "--config", str(tmp_path / "config.yaml")]
    assert u.state["bad"]["0.1.4"].startswith("selftest failed")
    forced = u.update(index_url=url, force=True)
    assert forced.code == up.EXIT_GATE_FAILED  # --force retries it (and it fails again)


def test_wrong_hash_and_pip_failure_leave_the_running_slot_alone(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.5")], bad_hash=["0.1.5"])
    with pytest.raises(UpdateError, match="does not match") as e:
        u.update(index_url=url)
    assert e.value.code == up.EXIT_HASH
    assert u.active_slot() == "a" and not u.paths.slot("b").exists()
    assert "does not match" in u.state["bad"]["0.1.5"]
    told = up._guarded(u, "update", lambda: u.update(index_url=url, force=True))
    assert (told.code, told.version) == (up.EXIT_HASH, "0.1.5")
    assert json.loads(u.paths.result.read_text())["version"] == "0.1.5"
    u.host.pip_rc = 1  # type: ignore[attr-defined]
    url2 = make_index(tmp_path / "idx2", [make_wheel(tmp_path / "w2", "0.1.6")])
    with pytest.raises(UpdateError, match="pip install failed") as e:
        u.update(index_url=url2)
    assert e.value.code == up.EXIT_BUILD_FAILED
    assert u.active_slot() == "a" and "0.1.6" not in u.state["bad"]  # network: may retry


def test_pin_refuses_ota_and_names_the_pin(box: Callable[..., Updater], tmp_path: Path) -> None:
    u = box()
    wheel = make_wheel(tmp_path / "local", "0.1.0")
    assert u.install("0.1.0", pin=True, start=False, wheel=str(wheel)).switched
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.2.0")])
    r = u.update(index_url=url)
    assert r.code == up.EXIT_PINNED and "0.1.0 is pinned by Ansible" in r.message


def test_install_keeps_a_newer_ota_version_unless_pinned(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.2.0")])
    assert u.update(index_url=url).outcome == "updated"
    old = make_wheel(tmp_path / "local", "0.1.0")
    kept = u.install("0.1.0", pin=False, start=True, wheel=str(old))
    assert kept.outcome == "kept_newer" and not kept.switched and "keeping 0.2.0" in kept.message
    same = u.install("0.2.0", pin=False, start=True, index_url=url)
    assert same.outcome == "up_to_date"
    down = u.install("0.1.0", pin=True, start=True, wheel=str(old))
    assert down.switched and u.active_version() == "0.1.0" and u.state["pin"] == "0.1.0"
    u.set_pin(None)
    assert u.state["pin"] is None


def test_first_install_with_a_failing_probation_has_nothing_to_go_back_to(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    u.host.behaviour = "crash"  # type: ignore[attr-defined]
    r = u.install("0.1.0", pin=False, start=True, wheel=str(make_wheel(tmp_path / "l", "0.1.0")))
    assert r.code == up.EXIT_ROLLED_BACK and "no earlier good version" in r.message


def test_wheel_argument_must_match_the_version(box: Callable[..., Updater], tmp_path: Path) -> None:
    u = box()
    wheel = make_wheel(tmp_path / "l", "0.1.0")
    with pytest.raises(UpdateError, match=r"is 0\.1\.0, not 0\.2\.0"):
        u.resolve("0.2.0", wheel=str(wheel))
    with pytest.raises(UpdateError, match="not a spyoncino wheel"):
        u.resolve(None, wheel=str(tmp_path / "nope.whl"))
    found = u.resolve(None, find_links=[str(wheel.parent), str(tmp_path / "missing")])
    assert found.local and found.version == "0.1.0"


# -- recovery: a pending marker, a slot never marked good -------------------------------------
def _interrupted(u: Updater, tmp_path: Path) -> None:
    """State as left by an updater killed during probation of 0.1.1 (slot b)."""
    installed(u, "0.1.0", tmp_path)
    u.build("b", make_wheel(tmp_path / "w", "0.1.1"), "0.1.1", "x")
    up.write_json(u.paths.pending, {"slot": "b", "version": "0.1.1", "previous_slot": "a"})
    u.switch("b")


def test_recover_goes_back_to_the_last_good_slot(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    _interrupted(u, tmp_path)
    fresh = box()  # what a new process (the boot check) reads from disk
    assert fresh.recover(restart=False)
    assert fresh.active_slot() == "a" and not fresh.paths.pending.exists()
    assert fresh.state["slots"]["b"]["status"] == "interrupted"
    assert "0.1.1" not in fresh.state["bad"]  # a power cut is not the release's fault
    assert not box().recover(restart=False)  # nothing left to do


def test_recover_without_marker_leaves_a_never_good_current_slot(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    u.build("b", make_wheel(tmp_path / "w", "0.1.1"), "0.1.1", "x")
    u.switch("b")  # e.g. a hand-made switch to a slot that never passed probation
    assert u.recover(restart=True)
    assert u.active_slot() == "a"
    assert u.host.restarts() == 1  # type: ignore[attr-defined]  # the service was running
    u.paths.current.unlink()
    assert u.recover(restart=False) and u.active_slot() == "a"


def test_recover_with_no_good_slot_changes_nothing(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    u.build("a", make_wheel(tmp_path / "w", "0.1.0"), "0.1.0", "x")
    u.switch("a")
    assert not u.recover(restart=False)
    assert u.active_slot() == "a"


def test_manual_rollback(box: Callable[..., Updater], tmp_path: Path) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    assert u.rollback().code == up.EXIT_ERROR  # slot b was never good
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.1")])
    u.update(index_url=url)
    r = u.rollback()
    assert (r.code, r.message) == (0, "rolled back 0.1.1 -> 0.1.0")
    assert u.active_slot() == "a"
    status = u.status()
    assert status["version"] == "0.1.0" and status["slots"]["b"]["good"]


# -- requests from the service, the lock, the command line -------------------------------------
def test_requests_carry_only_an_action_and_a_version(tmp_path: Path) -> None:
    path = up.write_request(tmp_path, "update", "0.1.1")
    assert up.read_request(path) == {"action": "update", "version": "0.1.1"}
    assert not path.exists()  # consumed, so the .path unit does not fire again
    for body, match in [
        ("{", "not JSON"),
        ("[]", "not an object"),
        ('{"action": "shell"}', "not update/check/rollback"),
        ('{"version": "1; rm -rf /"}', "not a version"),
    ]:
        path.write_text(body)
        with pytest.raises(UpdateError, match=match):
            up.read_request(path)
        assert not path.exists()


def test_one_updater_at_a_time(tmp_path: Path) -> None:
    with up.locked(tmp_path / "lock"):
        with pytest.raises(UpdateError, match="another update") as e, up.locked(tmp_path / "lock"):
            pass
        assert e.value.code == up.EXIT_BUSY
    with up.locked(tmp_path / "lock"):
        pass


def _cli(tmp_path: Path, *argv: str) -> int:
    settings = tmp_path / "update.json"
    if not settings.exists():
        settings.write_text(json.dumps({"service": "none", "probation_s": 0}))
    return up.main(
        [
            "--root",
            str(tmp_path / "opt"),
            "--state-dir",
            str(tmp_path / "state"),
            "--exchange-dir",
            str(tmp_path / "ex"),
            "--settings",
            str(settings),
            *argv,
        ]
    )


def test_command_line_check_status_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.0")])
    assert _cli(tmp_path, "--check", "--index-url", url) == up.EXIT_NEWER
    assert "newer version available: 0.1.0" in capsys.readouterr().out
    assert _cli(tmp_path, "--json", "--check", "--index-url", "http://127.0.0.1:9/s") == 4
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["code"] == up.EXIT_UNREACHABLE
    assert _cli(tmp_path, "--version", "9.9", "--index-url", url) == up.EXIT_USAGE
    assert "no A/B slots here" in capsys.readouterr().out
    assert _cli(tmp_path, "install", "--version", "9.9", "--index-url", url) == 3
    assert "no such version" in capsys.readouterr().out
    assert _cli(tmp_path, "install") == up.EXIT_USAGE
    assert _cli(tmp_path, "status") == 0
    assert "running: nothing" in capsys.readouterr().out
    assert _cli(tmp_path, "--json", "status") == 0
    assert json.loads(capsys.readouterr().out)["current"] is None
    assert _cli(tmp_path, "boot-check") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _cli(tmp_path, "request") == 0
    assert "no request" in capsys.readouterr().out
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / "request.json").write_text('{"action": "nope"}')
    assert _cli(tmp_path, "request") == up.EXIT_USAGE
    assert json.loads((tmp_path / "ex" / "result.json").read_text())["outcome"] == "bad_request"
    assert _cli(tmp_path, "rollback") == up.EXIT_ERROR


def test_command_line_serves_a_check_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.0")])
    (tmp_path / "update.json").write_text(json.dumps({"index_url": url, "service": "none"}))
    (tmp_path / "ex").mkdir()
    up.write_request(tmp_path / "ex", "check")
    (tmp_path / "ex" / "result.json").write_text('{"outcome": "updated"}')
    assert _cli(tmp_path, "request") == up.EXIT_NEWER
    check = json.loads((tmp_path / "ex" / "check.json").read_text())
    assert check["outcome"] == "newer" and check["version"] == "0.1.0"
    assert check["action"] == "check" and check["at"] > 0
    # the last update's result stays for the app to read: a check never hides it
    assert json.loads((tmp_path / "ex" / "result.json").read_text()) == {"outcome": "updated"}
    up.write_request(tmp_path / "ex", "rollback")
    assert _cli(tmp_path, "request") == up.EXIT_ERROR


def test_status_text_lists_slots_pin_and_bad_versions(
    box: Callable[..., Updater], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    u.state["bad"]["0.1.2"] = "crashed"
    u.set_pin("0.1.0")
    up.write_json(u.paths.pending, {"version": "0.1.3"})
    u.report("update", up.Outcome(0, "already up to date (0.1.0)", outcome="up_to_date"))
    up._print_status(u.status())
    out = capsys.readouterr().out
    for line in (
        "running: 0.1.0 (slot a)",
        " * slot a: 0.1.0 good",
        "   slot b: empty",
        "pinned by Ansible: 0.1.0",
        "bad: 0.1.2: crashed",
        "probation in progress: 0.1.3",
        "last: update -> up_to_date",
    ):
        assert line in out


def test_real_host_runs_commands_and_reports_timeouts(tmp_path: Path) -> None:
    host = up.Host()
    assert host.run(["sh", "-c", "echo hi; echo err >&2"]) == (0, "hi\nerr\n")
    rc, out = host.run(["sleep", "5"], timeout=0.2)
    assert rc == 124 and "timed out" in out
    assert host.run([str(tmp_path / "missing")])[0] == 127
    assert host.run(["true"], user="nobody-such-user")[0] == 0


def _legacy_venv(u: Updater, version: str) -> Path:
    venv = u.paths.venv_link
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "spyoncino").write_text("legacy")
    (venv / "lib" / "python3.11" / "site-packages" / f"spyoncino-{version}.dist-info").mkdir(
        parents=True
    )
    return venv


def test_the_old_single_venv_is_what_a_failed_migration_goes_back_to(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    venv = _legacy_venv(u, "0.1.0")
    wheel = make_wheel(tmp_path / "l", "0.1.0")
    u.host.behaviour = "crash"  # type: ignore[attr-defined]
    r = u.install("0.1.0", pin=False, start=True, wheel=str(wheel))
    assert r.code == up.EXIT_ROLLED_BACK and "rolled back to 0.1.0" in r.message
    assert os.readlink(u.paths.slot("b")) == "../venv" and u.active_slot() == "b"
    assert (u.paths.current / "bin" / "spyoncino").read_text() == "legacy"  # it runs again
    u.host.behaviour = "ok"  # type: ignore[attr-defined]
    ok = u.install("0.1.0", pin=False, start=True, force=True, wheel=str(wheel))
    assert ok.switched and u.active_slot() == "a", ok.message
    # the role removes the old folder; a later build of slot b drops only the link
    u.update("0.1.1", wheel=str(make_wheel(tmp_path / "l", "0.1.1")))
    assert venv.is_dir() and u.paths.slot("b").is_dir() and not u.paths.slot("b").is_symlink()


def test_an_old_venv_at_the_same_version_still_becomes_a_slot(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    _legacy_venv(u, "0.1.0")
    r = u.install("0.1.0", pin=False, start=True, wheel=str(make_wheel(tmp_path / "l", "0.1.0")))
    assert r.switched and u.active_slot() == "a" and r.message.startswith("updated 0.1.0 -> 0.1.0")
    assert not u.adopt_legacy_venv()  # once only


def test_a_link_planted_at_the_temp_name_does_not_redirect_the_write(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / ".result.json.tmp").symlink_to(victim)
    up.write_json(tmp_path / "ex" / "result.json", {"outcome": "updated"})
    assert victim.read_text() == "precious"
    assert json.loads((tmp_path / "ex" / "result.json").read_text()) == {"outcome": "updated"}


def test_without_root_the_updater_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*a: object) -> int:
        raise PermissionError(13, "Permission denied", "/var/lib/spyoncino-update/lock")

    monkeypatch.setattr(up, "_dispatch", denied)
    assert _cli(tmp_path, "rollback") == up.EXIT_ERROR
    out = capsys.readouterr().out
    assert "permission denied: /var/lib/spyoncino-update/lock: run it as root (sudo)" in out


def test_a_marker_left_after_the_slot_was_marked_good_keeps_the_new_version(
    box: Callable[..., Updater], tmp_path: Path
) -> None:
    u = box()
    installed(u, "0.1.0", tmp_path)
    u.update(index_url=make_index(tmp_path / "idx", [make_wheel(tmp_path / "w", "0.1.1")]))
    # a power cut between "slot b is good" and the removal of the marker
    up.write_json(u.paths.pending, {"slot": "b", "version": "0.1.1", "previous_slot": "a"})
    fresh = box()
    assert not fresh.recover(restart=False)
    assert fresh.active_slot() == "b" and not fresh.paths.pending.exists()
