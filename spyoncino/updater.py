#!/usr/bin/env python3
"""spyoncino-update: A/B over-the-air updates that cannot brick the box.

A single file on purpose: the Ansible role copies it out of the wheel to
``/opt/spyoncino/bin/spyoncino-update`` and runs it with the system ``/usr/bin/python3``, so it
works even when the installed package does not import. It uses the standard library only and
imports nothing else of spyoncino.

Layout (``/opt/spyoncino``)::

    slots/a, slots/b   two complete virtualenvs; the running one is never modified
    current -> slots/a the unit runs current/bin/spyoncino; switched by an atomic rename
    venv -> current    compatibility link for scripts that name the old single venv
    bin/spyoncino-update  this file

An update resolves the version (PEP 503 simple page, sha256 from the link), downloads and
verifies the wheel, builds the *inactive* slot from scratch, gates it (``check-config`` on the
live configuration, ``selftest``), writes a pending marker, switches, restarts the service and
holds a probation window (READY, ``/health/ready`` 200, no restart or watchdog). Success marks
the slot good; any failure switches back, restarts the old version and marks the new one bad.
``boot-check`` (run before the service at every boot) and every updater start undo a switch
whose probation never finished, so the box never boots a slot that was never marked good.

Exit codes (also in docs/updates.md): see the ``EXIT_*`` constants below.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import html.parser
import json
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

PACKAGE = "spyoncino"

EXIT_OK = 0  #: updated, already up to date, or nothing to do
EXIT_ERROR = 1  #: anything unexpected (the message says what)
EXIT_USAGE = 2  #: bad arguments or settings
EXIT_NO_SUCH_VERSION = 3  #: the index (or folder) has no such version
EXIT_UNREACHABLE = 4  #: the index could not be reached or read
EXIT_GATE_FAILED = 5  #: the new slot failed check-config or selftest; nothing was switched
EXIT_ROLLED_BACK = 6  #: the new version failed probation; the previous one runs again
EXIT_HASH = 7  #: the wheel's sha256 is missing from the index or does not match
EXIT_PINNED = 8  #: a version is pinned (by Ansible); OTA refuses to change it
EXIT_BUSY = 9  #: another update is running
EXIT_NEWER = 10  #: --check: a newer version is available
EXIT_BUILD_FAILED = 11  #: venv or pip failed while building the slot (often the network)
EXIT_BAD_VERSION = 12  #: that version failed before and is not retried without --force

SLOTS = ("a", "b")
_VERSION = re.compile(r"^(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?(?:\.post(\d+))?(?:\.dev(\d+))?$")
_REQUEST_MAX = 4096


class UpdateError(Exception):
    """A failure with the exit code that describes it."""

    def __init__(self, code: int, message: str, version: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        #: the version the failure is about, once it is known
        self.version = version


def log(message: str) -> None:
    """One line to stdout: the journal when run by systemd, the terminal otherwise."""
    print(f"spyoncino-update: {message}", flush=True)


# -- versions and the index -------------------------------------------------------------------
def version_key(version: str) -> tuple[Any, ...]:
    """Sort key of a PEP 440 version (the subset releases use: N.N.N[{a|b|rc}N][.postN][.devN])."""
    m = _VERSION.match(version.strip())
    if m is None:
        raise ValueError(f"not a version: {version!r}")
    release = tuple(int(p) for p in m.group(1).split("."))
    release = release + (0,) * (6 - len(release))
    pre_rank = {"a": 0, "b": 1, "rc": 2}
    # a dev release sorts before its pre-releases; a final release after them
    if m.group(2):
        pre: tuple[int, int] = (pre_rank[m.group(2)], int(m.group(3)))
    elif m.group(5) is not None and m.group(4) is None:
        pre = (-1, 0)
    else:
        pre = (3, 0)
    post = int(m.group(4)) if m.group(4) is not None else -1
    dev = int(m.group(5)) if m.group(5) is not None else 1 << 30
    return (release, pre, post, dev)


def is_prerelease(version: str) -> bool:
    m = _VERSION.match(version)
    return bool(m and (m.group(2) or m.group(5) is not None))


def normalize(name: str) -> str:
    """PEP 503 project name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Release:
    """One wheel of the package: where it is and the sha256 it must have."""

    version: str
    url: str
    filename: str
    sha256: str | None
    #: a wheel the operator gave (a file path): trusted as is, its hash only recorded
    local: bool = False


def wheel_version(filename: str, package: str = PACKAGE) -> str | None:
    """The version of a pure-Python wheel of ``package`` named ``filename``, else None."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6) or normalize(parts[0]) != normalize(package):
        return None
    if parts[-3] not in ("py3", "py2.py3") or parts[-1] != "any":
        return None
    try:
        version_key(parts[1])
    except ValueError:
        return None
    return parts[1]


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


def parse_simple_page(text: str, base_url: str, package: str = PACKAGE) -> list[Release]:
    """The package's wheels on a PEP 503 simple page (yanked files left out)."""
    parser = _Links()
    parser.feed(text)
    out: list[Release] = []
    for attrs in parser.links:
        href = attrs.get("href")
        if not href or "data-yanked" in attrs:
            continue
        url = urllib.parse.urljoin(base_url, href)
        clean, _, fragment = url.partition("#")
        filename = urllib.parse.unquote(clean.rsplit("/", 1)[-1])
        version = wheel_version(filename, package)
        if version is None:
            continue
        digest = None
        for piece in fragment.split("&"):
            name, _, value = piece.partition("=")
            if name == "sha256" and re.fullmatch(r"[0-9a-fA-F]{64}", value):
                digest = value.lower()
        out.append(Release(version, clean, filename, digest))
    return out


def fetch_index(index_url: str, package: str = PACKAGE, timeout: float = 20.0) -> list[Release]:
    """Read ``<index_url>/<package>/``; every network or HTTP failure is EXIT_UNREACHABLE."""
    url = index_url.rstrip("/") + f"/{normalize(package)}/"
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise UpdateError(EXIT_USAGE, f"index URL {index_url!r} is not http(s) or file")
    if url.startswith("file:") and Path(urllib.request.url2pathname(url[5:])).is_dir():
        url += "index.html"  # a static index on disk, as pip reads it
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked
            text = resp.read(8 << 20).decode("utf-8", "replace")
            final = resp.geturl()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return []
        raise UpdateError(EXIT_UNREACHABLE, f"index {url} answered HTTP {e.code}") from e
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UpdateError(EXIT_UNREACHABLE, f"index {url} is unreachable: {reason}") from e
    return parse_simple_page(text, final, package)


def local_releases(folders: Sequence[str], package: str = PACKAGE) -> list[Release]:
    """Wheels of the package in --find-links folders (files the operator put there)."""
    out: list[Release] = []
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            continue
        for f in sorted(path.iterdir()):
            version = wheel_version(f.name, package)
            if version is not None:
                out.append(Release(version, str(f), f.name, None, local=True))
    return out


def choose(releases: Sequence[Release], version: str | None, pre: bool = False) -> Release | None:
    """The release of ``version``, or the newest final one (pre-releases only when asked)."""
    if version is not None:
        want = version_key(version)
        return next((r for r in releases if version_key(r.version) == want), None)
    pool = [r for r in releases if pre or not is_prerelease(r.version)]
    return max(pool, key=lambda r: version_key(r.version), default=None)


# -- the release lock ------------------------------------------------------------------------
LOCK_MAGIC = "# spyoncino-lock 1"


@dataclass(frozen=True)
class Lock:
    """``spyoncino/data/constraints/release.txt`` when ``make dist`` wrote it: every dependency
    pinned with the sha256 of each file it may be installed from, and what it covers."""

    extras: frozenset[str]
    #: ``<machine>-cp<major><minor>`` of the wheelhouses it was made from (``x86_64-cp311``)
    platforms: frozenset[str]
    #: requirement lines, ``name==version [; marker] --hash=sha256:... ...``
    lines: tuple[str, ...]

    def pins(self) -> str:
        """The same pins without hashes (constraints for a platform the lock does not cover)."""
        return "".join(line.split(" --hash=")[0].split(" ; ")[0] + "\n" for line in self.lines)


def platform_tag() -> str:
    """This interpreter's ``<machine>-cp<major><minor>`` (the slots are built with it)."""
    return f"{platform.machine()}-cp{sys.version_info[0]}{sys.version_info[1]}"


def parse_lock(text: str) -> Lock | None:
    """The lock in ``text``; None when it is plain pins (a release before locks, or a test's)."""
    if not text.startswith(LOCK_MAGIC):
        return None
    extras: frozenset[str] = frozenset()
    platforms: frozenset[str] = frozenset()
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# lock-extras:"):
            extras = frozenset(line.split(":", 1)[1].split())
        elif line.startswith("# lock-platforms:"):
            platforms = frozenset(line.split(":", 1)[1].split())
        elif line and not line.startswith("#"):
            if "--hash=sha256:" not in line:
                return None
            lines.append(line)
    return Lock(extras, platforms, tuple(lines))


def _marker(tag: str) -> str:
    machine, _, py = tag.partition("-cp")
    return f'(platform_machine == "{machine}" and python_version == "{py[0]}.{py[1:]}")'


def make_lock(wheelhouses: Sequence[tuple[Path, str]], extras: Sequence[str] = ()) -> str:
    """The lock of the dependency set in ``wheelhouses`` (folder, platform tag each: what
    ``pip wheel`` made there for that platform). A package every wheelhouse has is pinned
    plainly; one only some have (a platform marker in a dependency) gets a marker for them.
    Different versions of one package in two wheelhouses are refused: a lock pins one."""
    found: dict[str, tuple[str, dict[str, set[str]]]] = {}
    tags = [tag for _folder, tag in wheelhouses]
    for folder, tag in wheelhouses:
        for f in sorted(folder.iterdir()):
            if f.suffix != ".whl" and not f.name.endswith(".tar.gz"):
                continue
            stem = f.name[: -len(".tar.gz")] if f.name.endswith(".tar.gz") else f.name
            if f.suffix == ".whl":
                name, version = stem.split("-")[:2]
            else:
                name, _, version = stem.rpartition("-")
            name = normalize(name)
            if name == normalize(PACKAGE):
                continue
            have = found.setdefault(name, (version, {}))
            if have[0] != version:
                raise ValueError(
                    f"{name}: {have[0]} in one wheelhouse, {version} in {folder}: "
                    "build every wheelhouse from the same pins"
                )
            have[1].setdefault(tag, set()).add(sha256_file(f))
    out = [
        LOCK_MAGIC,
        "# Every dependency of this release with the sha256 of each file it may come from",
        "# (written by `make dist`; the updater installs with pip --require-hashes from it).",
        f"# lock-extras: {' '.join(sorted(set(extras)))}",
        f"# lock-platforms: {' '.join(sorted(set(tags)))}",
    ]
    for name in sorted(found):
        version, by_tag = found[name]
        line = f"{name}=={version}"
        if set(by_tag) != set(tags):
            line += " ; " + " or ".join(_marker(t) for t in sorted(by_tag))
        digests = sorted({h for hs in by_tag.values() for h in hs})
        out.append(line + "".join(f" --hash=sha256:{h}" for h in digests))
    return "\n".join(out) + "\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(release: Release, folder: Path, timeout: float = 60.0) -> Path:
    """Fetch the wheel into ``folder`` and check its sha256 against the index's; a link without
    a hash is refused (EXIT_HASH) rather than trusted."""
    if release.local:
        return Path(release.url)
    if release.sha256 is None:
        raise UpdateError(
            EXIT_HASH,
            f"the index gives no sha256 for {release.filename}: refusing an unverifiable wheel",
        )
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / release.filename
    if dest.is_file() and sha256_file(dest) == release.sha256:
        return dest
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(release.url, timeout=timeout) as resp,  # noqa: S310
            part.open("wb") as out,
        ):
            for block in iter(lambda: resp.read(1 << 20), b""):
                h.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise UpdateError(EXIT_UNREACHABLE, f"download of {release.url} failed: {reason}") from e
    if h.hexdigest() != release.sha256:
        part.unlink(missing_ok=True)
        raise UpdateError(
            EXIT_HASH,
            f"{release.filename}: sha256 {h.hexdigest()} does not match the index's "
            f"{release.sha256}: refusing it",
        )
    os.replace(part, dest)
    return dest


# -- files written so a power cut leaves the old or the new content, nothing between ----------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    # O_EXCL|O_NOFOLLOW: the result file goes into the service's folder, where a link planted
    # at the temp name must not redirect a root write; rename() does not follow links either
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fchmod(f.fileno(), mode)
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def symlink_atomic(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (relative) by renaming a new link over it, then fsync."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


# -- settings, paths, state -------------------------------------------------------------------
@dataclass
class Settings:
    """What the role decided for this box (``/etc/spyoncino/update.json``)."""

    index_url: str = ""
    extra_index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    no_index: bool = False
    extras: list[str] = field(default_factory=list)
    system_site_packages: bool = False
    python: str = "/usr/bin/python3"
    service: str = "spyoncino"
    user: str = "spyoncino"
    config: str = "/etc/spyoncino/config.yaml"
    health_url: str = "http://127.0.0.1:8080/health/ready"
    probation_s: float = 120.0
    #: how long the restarted service may take to say READY (the unit's TimeoutStartSec)
    start_timeout_s: float = 120.0
    http_timeout_s: float = 20.0
    gate_timeout_s: float = 300.0

    @classmethod
    def load(cls, path: Path | None) -> Settings:
        data = read_json(path) if path is not None else None
        if data is None:
            return cls()
        out = cls()
        for f in fields(cls):
            if f.name not in data:
                continue
            value, default = data[f.name], getattr(out, f.name)
            # Ansible may hand over "True" or "120.0" where JSON would have true or 120.0
            if isinstance(default, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("true", "1")
            elif isinstance(default, float):
                value = float(value)
            elif isinstance(default, list):
                value = [str(v) for v in value] if isinstance(value, list) else []
            else:
                value = str(value)
            setattr(out, f.name, value)
        return out


@dataclass(frozen=True)
class Paths:
    root: Path = Path("/opt/spyoncino")
    state: Path = Path("/var/lib/spyoncino-update")
    #: the main service's own folder for requests and results (it can write there)
    exchange: Path = Path("/var/lib/spyoncino/update")

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def venv_link(self) -> Path:
        return self.root / "venv"

    @property
    def standalone(self) -> Path:
        return self.root / "bin" / "spyoncino-update"

    def slot(self, name: str) -> Path:
        return self.root / "slots" / name

    @property
    def state_file(self) -> Path:
        return self.state / "state.json"

    @property
    def pending(self) -> Path:
        return self.state / "pending.json"

    @property
    def request(self) -> Path:
        return self.exchange / "request.json"

    @property
    def result(self) -> Path:
        return self.exchange / "result.json"

    @property
    def check(self) -> Path:
        return self.exchange / "check.json"


def _empty_state() -> dict[str, Any]:
    return {"format": 1, "slots": {}, "bad": {}, "pin": None, "history": []}


# -- the service manager and the health URL, behind one seam the unit tests replace ---------
class Host:
    """Everything that talks to systemd, runs programs or polls the health URL."""

    def run(
        self, argv: Sequence[str], *, user: str | None = None, timeout: float = 600.0
    ) -> tuple[int, str]:
        kwargs: dict[str, Any] = {}
        if user is not None and os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                pw = None
            if pw is not None:
                kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/"}
        env.update({k: v for k, v in os.environ.items() if k.startswith(("PIP_", "SPYONCINO_"))})
        try:
            out = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd="/",
                env=env,
                **kwargs,
            )
        except subprocess.TimeoutExpired as e:
            return 124, f"timed out after {timeout:.0f} s: {' '.join(argv)}\n{e.output or ''}"
        except OSError as e:
            return 127, f"{argv[0]}: {e}"
        return out.returncode, (out.stdout or "") + (out.stderr or "")

    def systemctl(self, *args: str) -> tuple[int, str]:
        return self.run(["systemctl", *args], timeout=120)

    def show(self, unit: str) -> dict[str, str]:
        props = "ActiveState,SubState,MainPID,NRestarts,Result,LoadState,InvocationID"
        _rc, out = self.systemctl("show", unit, f"--property={props}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def healthy(self, url: str, timeout: float = 3.0) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except (OSError, ValueError):
            return False

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def sync(self) -> None:
        os.sync()


# -- the updater ------------------------------------------------------------------------------
@dataclass
class Outcome:
    code: int
    message: str
    switched: bool = False
    version: str | None = None
    outcome: str = "done"


class Updater:
    def __init__(
        self,
        paths: Paths,
        settings: Settings,
        host: Host | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.host = host or Host()
        self.clock = clock
        self.state = self._load_state()

    # state ---------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        data = read_json(self.paths.state_file)
        if data is None:
            return _empty_state()
        base = _empty_state()
        base.update(data)
        return base

    def save(self) -> None:
        self.paths.state.mkdir(parents=True, exist_ok=True)
        write_json(self.paths.state_file, self.state, 0o644)

    def slot_info(self, slot: str) -> dict[str, Any]:
        info: dict[str, Any] = self.state["slots"].setdefault(slot, {})
        return info

    def is_good(self, slot: str | None) -> bool:
        if slot is None or not (self.paths.slot(slot) / "bin" / "spyoncino").exists():
            return False
        return bool(self.state["slots"].get(slot, {}).get("good"))

    def active_slot(self) -> str | None:
        try:
            target = os.readlink(self.paths.current)
        except OSError:
            return None
        name = Path(target).name
        return name if name in SLOTS else None

    def active_version(self) -> str | None:
        slot = self.active_slot()
        v = self.state["slots"].get(slot, {}).get("version") if slot else None
        return str(v) if v else None

    def other(self, slot: str | None) -> str:
        return "b" if slot == "a" else "a"

    def _history(self, entry: dict[str, Any]) -> None:
        entry = {"at": round(self.clock(), 3), **entry}
        self.state["history"] = [*self.state.get("history", []), entry][-20:]

    def report(self, action: str, result: Outcome, **extra: Any) -> Outcome:
        """Tell the owner: the journal (stdout), the state, and the service's result file."""
        log(result.message)
        entry = {
            "action": action,
            "outcome": result.outcome,
            "exit_code": result.code,
            "message": result.message,
            "version": result.version,
            "running": self.active_version(),
            **extra,
        }
        self._history(entry)
        # a check has its own file: it must not hide the last update's result from the app
        check = action == "check"
        key = "last_check" if check else "last_result"
        out = self.paths.check if check else self.paths.result
        self.state[key] = {"at": round(self.clock(), 3), **entry}
        self.save()
        if self.paths.exchange.is_dir():
            with contextlib.suppress(OSError):
                write_json(out, self.state[key], 0o644)
        return result

    # switching -----------------------------------------------------------------------------
    def switch(self, slot: str) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        symlink_atomic(self.paths.current, f"slots/{slot}")
        link = self.paths.venv_link
        # a real directory there is the old single venv: the role migrates it
        if not link.exists() or (link.is_symlink() and os.readlink(link) != "current"):
            symlink_atomic(link, "current")

    def adopt_legacy_venv(self) -> bool:
        """A box from before the slots: its real ``venv`` folder becomes slot b (a link to
        it, marked good: it is what runs), so the first slot build has something to go back
        to. The role removes the folder once the new slot passed probation."""
        legacy = self.paths.venv_link
        if legacy.is_symlink() or not (legacy / "bin" / "spyoncino").exists():
            return False
        if self.state["slots"] or self.active_slot() is not None:
            return False
        found = sorted(legacy.glob(f"lib/python3*/site-packages/{PACKAGE}-*.dist-info"))
        version = found[-1].name[len(PACKAGE) + 1 : -len(".dist-info")] if found else "0"
        slot = self.paths.slot("b")
        slot.parent.mkdir(parents=True, exist_ok=True)
        symlink_atomic(slot, "../venv")
        self.slot_info("b").update(
            {"version": version, "status": "good", "good": True, "legacy": True}
        )
        self.save()
        self.switch("b")
        log(f"adopted the single virtualenv {legacy} ({version}) as slot b")
        return True

    def recover(self, *, restart: bool) -> bool:
        """Undo a switch whose probation never finished; True when ``current`` changed.

        Runs at boot (before the service) and when an updater starts while a pending marker
        is left by one that died: the box goes back to the last slot marked good.
        """
        pending = read_json(self.paths.pending)
        current = self.active_slot()
        target: str | None = None
        if pending is not None:
            prev = pending.get("previous_slot")
            new = pending.get("slot")
            if isinstance(new, str) and new in SLOTS and not self.is_good(new):
                info = self.slot_info(new)
                info["status"] = "interrupted"
                log(
                    f"an update to {pending.get('version')} was interrupted during probation; "
                    "going back to the last good slot"
                )
            # marked good just before the marker was removed: the update had finished
            finished = isinstance(new, str) and self.is_good(new)
            if not finished and isinstance(prev, str) and self.is_good(prev):
                target = prev
        if target is None and current is not None and not self.is_good(current):
            candidates = [s for s in SLOTS if self.is_good(s)]
            if candidates:
                target = candidates[0]
            else:
                log(f"slot {current} was never marked good, and no slot is: leaving it")
        if target is None and current is None:
            target = next((s for s in SLOTS if self.is_good(s)), None)
        changed = target is not None and target != current
        if changed and target is not None:
            self.switch(target)
            log(f"switched back to slot {target} ({self.slot_info(target).get('version')})")
        self._discard_pending()
        if changed:
            self._history({"action": "recover", "outcome": "switched_back", "slot": target})
            self.save()
            if restart and self._service_wanted():
                self._restart_and_wait(self.settings.probation_s)
        elif pending is not None:
            self.save()
        return changed

    def _discard_pending(self) -> None:
        if self.paths.pending.exists():
            self.paths.pending.unlink()
            fsync_dir(self.paths.pending.parent)

    def _service_wanted(self) -> bool:
        props = self.host.show(self.settings.service)
        return props.get("ActiveState") in ("active", "activating", "reloading", "deactivating")

    # building ------------------------------------------------------------------------------
    def build(self, slot: str, wheel: Path, version: str, sha256: str) -> None:
        """Make ``slot`` a fresh venv with the wheel; never called on the active slot."""
        if slot == self.active_slot():  # pragma: no cover - guarded by callers
            raise UpdateError(EXIT_ERROR, "refusing to rebuild the running slot")
        info = self.slot_info(slot)
        info.clear()
        info.update({"version": version, "status": "building", "good": False, "sha256": sha256})
        self.save()
        path = self.paths.slot(slot)
        t0 = self.host.monotonic()
        if path.is_symlink():  # the adopted legacy venv: the link goes, the folder is the role's
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        venv = [self.settings.python, "-m", "venv"]
        if self.settings.system_site_packages:
            venv.append("--system-site-packages")
        rc, out = self.host.run([*venv, str(path)], timeout=300)
        if rc != 0:
            raise UpdateError(EXIT_BUILD_FAILED, f"python -m venv failed ({rc}): {out[-2000:]}")
        extras = "[" + ",".join(sorted(self.settings.extras)) + "]" if self.settings.extras else ""
        pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--no-input"]
        pip += ["--disable-pip-version-check", "--progress-bar", "off"]
        lock, why = self._lock(wheel)
        if lock is not None:
            # every file pip installs must have a sha256 the release's lock lists (the wheel's
            # own is the one verified above); a dependency missing from it is refused
            reqs = self.paths.state / "constraints" / f"{version}-install.txt"
            line = f"{PACKAGE}{extras} @ {wheel.resolve().as_uri()} --hash=sha256:{sha256}"
            write_atomic(reqs, ("\n".join([line, *lock.lines]) + "\n").encode())
            pip += ["--require-hashes", "--requirement", str(reqs), *self.pip_index_args()]
            info["hashes"] = "release lock (--require-hashes)"
            args = pip
        else:
            for constraints in self._constraints(wheel, version):
                pip += ["--constraint", str(constraints)]
            info["hashes"] = f"index ({why})"
            args = [*pip, *self.pip_index_args(), str(wheel) + extras]
        log(f"dependencies verified by: {info['hashes']}")
        rc, out = self.host.run(args, timeout=1800)
        if rc != 0:
            info["status"] = "failed"
            self.save()
            raise UpdateError(EXIT_BUILD_FAILED, f"pip install failed ({rc}): {out[-3000:]}")
        # the slot must be on disk before anything may call it good
        self.host.sync()
        info.update({"status": "built", "built_at": round(self.clock(), 3)})
        info["build_s"] = round(self.host.monotonic() - t0, 1)
        self.save()
        log(f"slot {slot} built with {version} in {info['build_s']} s")

    def pip_index_args(self) -> list[str]:
        s = self.settings
        args: list[str] = []
        if s.index_url:
            args += ["--index-url", s.index_url]
        for url in s.extra_index_urls:
            args += ["--extra-index-url", url]
        for folder in s.find_links:
            args += ["--find-links", folder]
        if s.no_index:
            args.append("--no-index")
        return args

    def _read_member(self, wheel: Path, name: str) -> str | None:
        try:
            with zipfile.ZipFile(wheel) as z:
                return z.read(f"{PACKAGE}/data/constraints/{name}").decode("utf-8", "replace")
        except (OSError, KeyError, zipfile.BadZipFile):
            return None

    def _lock(self, wheel: Path) -> tuple[Lock | None, str]:
        """The release's lock when it covers this box, else None and why not."""
        if self.settings.system_site_packages:
            return None, "a venv that sees apt's packages takes constraints/picamera2.txt"
        text = self._read_member(wheel, "release.txt")
        lock = parse_lock(text) if text is not None else None
        if lock is None:
            return None, "the release ships no lock with hashes"
        if platform_tag() not in lock.platforms:
            covers = ", ".join(sorted(lock.platforms))
            return None, f"its lock covers {covers}, not {platform_tag()}"
        missing = set(self.settings.extras) - lock.extras
        if missing:
            return None, f"its lock does not cover the extras {', '.join(sorted(missing))}"
        return lock, ""

    def _constraints(self, wheel: Path, version: str) -> list[Path]:
        """The constraints file the release ships (``spyoncino/data/constraints/`` in the
        wheel): ``release.txt``, the versions it was tested with; or, for a venv that sees
        apt's packages, ``picamera2.txt`` instead (it keeps numpy where apt's picamera2
        needs it, which a lock resolved without apt's packages may contradict)."""
        names = ["picamera2.txt"] if self.settings.system_site_packages else ["release.txt"]
        out: list[Path] = []
        try:
            with zipfile.ZipFile(wheel) as z:
                present = set(z.namelist())
                for name in names:
                    member = f"{PACKAGE}/data/constraints/{name}"
                    if member in present:
                        data = z.read(member)
                        lock = parse_lock(data.decode("utf-8", "replace"))
                        if lock is not None:  # pins only: the hashes are for other platforms
                            data = lock.pins().encode()
                        dest = self.paths.state / "constraints" / f"{version}-{name}"
                        write_atomic(dest, data)
                        out.append(dest)
        except (OSError, zipfile.BadZipFile):
            return []
        return out

    def gate(self, slot: str) -> list[str]:
        """What is wrong with the built slot: check-config on the live config, then selftest."""
        exe = str(self.paths.slot(slot) / "bin" / "spyoncino")
        config = ["--config", self.settings.config] if Path(self.settings.config).is_file() else []
        failures: list[str] = []
        for name in ("check-config", "selftest"):
            rc, out = self.host.run(
                [exe, name, *config], user=self.settings.user, timeout=self.settings.gate_timeout_s
            )
            if rc != 0:
                lines = [line for line in out.strip().splitlines() if line.strip()]
                # selftest names each failed check on a FAIL line; otherwise the output's tail
                tail = " | ".join([x for x in lines if x.startswith("FAIL")] or lines[-6:])
                failures.append(f"{name} failed ({rc}): {tail}")
                break
        return failures

    # probation -----------------------------------------------------------------------------
    def _restart_and_wait(self, timeout_s: float) -> bool:
        svc = self.settings.service
        old = self.host.show(svc).get("InvocationID", "")
        self.host.systemctl("reset-failed", svc)
        self.host.systemctl("restart", "--no-block", svc)
        deadline = self.host.monotonic() + timeout_s
        while self.host.monotonic() < deadline:
            props = self.host.show(svc)
            if props.get("ActiveState") == "active" and self._new_run(props, old):
                return True
            self.host.sleep(1.0)
        return False

    @staticmethod
    def _new_run(props: dict[str, str], old: str) -> bool:
        """Whether systemd shows the restarted run, not the one still stopping: with
        --no-block the first looks can still see the old process "active"."""
        return not old or props.get("InvocationID", "") != old

    def probation(self, window_s: float) -> str | None:
        """Restart on the new slot and watch it; the reason it failed, or None."""
        svc = self.settings.service
        url = self.settings.health_url
        old = self.host.show(svc).get("InvocationID", "")
        self.host.systemctl("reset-failed", svc)
        rc, out = self.host.systemctl("restart", "--no-block", svc)
        if rc != 0:
            return f"systemctl restart failed: {out.strip()[-500:]}"
        t0 = self.host.monotonic()
        # READY within the start timeout; then the window runs from READY
        end = t0 + self.settings.start_timeout_s
        baseline: tuple[str, str] | None = None
        healthy = not url
        while True:
            props = self.host.show(svc)
            state, sub = props.get("ActiveState", ""), props.get("SubState", "")
            if not self._new_run(props, old):
                state = sub = "restarting"  # the old run is still stopping: not judged
            if state == "failed" or sub in ("auto-restart", "failed"):
                return f"the service failed to start (state {state}/{sub}, {props.get('Result')})"
            if state == "active":
                now = (props.get("MainPID", ""), props.get("NRestarts", ""))
                if baseline is None:
                    baseline = now
                    end = self.host.monotonic() + window_s
                    log(f"READY after {self.host.monotonic() - t0:.1f} s")
                elif now != baseline:
                    return (
                        "the service restarted during probation "
                        f"(Result={props.get('Result')}, NRestarts {baseline[1]} -> {now[1]})"
                    )
                if not healthy and self.host.healthy(url):
                    healthy = True
                    log(f"{url} answered 200 after {self.host.monotonic() - t0:.1f} s")
            elif baseline is not None:
                return f"the service left 'active' during probation ({state}/{sub})"
            if self.host.monotonic() >= end:
                break
            self.host.sleep(1.0)
        if baseline is None:
            return (
                "the service did not become ready (READY) within "
                f"{self.settings.start_timeout_s:.0f} s"
            )
        if not healthy:
            return f"{url} did not answer 200 within {window_s:.0f} s of READY"
        if url and not self.host.healthy(url):
            return f"{url} stopped answering 200 at the end of probation"
        return None

    # the update ----------------------------------------------------------------------------
    def resolve(
        self,
        version: str | None,
        *,
        index_url: str | None = None,
        wheel: str | None = None,
        find_links: Sequence[str] = (),
        pre: bool = False,
    ) -> Release:
        if wheel is not None:
            path = Path(wheel)
            v = wheel_version(path.name)
            if v is None or not path.is_file():
                raise UpdateError(EXIT_USAGE, f"{wheel} is not a spyoncino wheel file")
            if version is not None and version_key(v) != version_key(version):
                raise UpdateError(EXIT_NO_SUCH_VERSION, f"{path.name} is {v}, not {version}")
            return Release(v, str(path), path.name, None, local=True)
        url = index_url if index_url is not None else self.settings.index_url
        found: list[Release] = []
        if url:
            found = fetch_index(url, timeout=self.settings.http_timeout_s)
        folders = [*find_links, *self.settings.find_links]
        if not url and not folders:
            raise UpdateError(
                EXIT_USAGE, "no index and no wheel folder configured: give --index-url or --wheel"
            )
        found += local_releases(folders)
        chosen = choose(found, version, pre)
        if chosen is None:
            where = url or ", ".join(folders)
            if version is not None:
                have = sorted({r.version for r in found}, key=version_key)
                raise UpdateError(
                    EXIT_NO_SUCH_VERSION,
                    f"no such version: {PACKAGE} {version} is not on {where}"
                    + (f" (it has {', '.join(have)})" if have else ""),
                )
            raise UpdateError(EXIT_NO_SUCH_VERSION, f"{where} has no release of {PACKAGE}")
        return chosen

    def check(self, **kw: Any) -> Outcome:
        """Is a newer version available? Changes nothing."""
        running = self.active_version()
        try:
            newest = self.resolve(None, **kw)
        except UpdateError as e:
            return Outcome(e.code, str(e), outcome="check_failed")
        if running is not None and version_key(newest.version) <= version_key(running):
            return Outcome(
                EXIT_OK, f"already up to date ({running})", version=running, outcome="up_to_date"
            )
        where = "" if running is None else f" (running {running})"
        return Outcome(
            EXIT_NEWER,
            f"newer version available: {newest.version}{where}",
            version=newest.version,
            outcome="newer",
        )

    def update(
        self,
        version: str | None = None,
        *,
        start: bool = True,
        force: bool = False,
        by_role: bool = False,
        **kw: Any,
    ) -> Outcome:
        running = self.active_version()
        pin = self.state.get("pin")
        if pin and not by_role and version != pin:
            return Outcome(
                EXIT_PINNED,
                f"version {pin} is pinned by Ansible (spyoncino_version_pinned): not updating; "
                "change spyoncino_version in the inventory instead",
                outcome="pinned",
            )
        if not by_role and self.active_slot() is None:
            raise UpdateError(
                EXIT_USAGE,
                f"no A/B slots here ({self.paths.current} is missing): the Ansible role and the "
                "image set them up; a box installed by hand upgrades with pip (docs/install.md)",
            )
        release = self.resolve(version, **kw)
        target = release.version
        active = self.active_slot()
        if (
            running is not None
            and self.is_good(active)
            and not self._legacy(active)
            and version_key(target) == version_key(running)
        ):
            return Outcome(
                EXIT_OK, f"already up to date ({running})", version=running, outcome="up_to_date"
            )
        if target in self.state["bad"] and not force:
            why = self.state["bad"][target]
            return Outcome(
                EXIT_BAD_VERSION,
                f"{target} failed before ({why}); not retried without --force",
                version=target,
                outcome="refused_bad",
            )
        slot = self.other(active)
        try:
            wheel = download(release, self.paths.state / "downloads", self.settings.http_timeout_s)
            log(f"building slot {slot} with {target} (running: {running or 'nothing'})")
            self.build(slot, wheel, target, sha256_file(wheel))
        except UpdateError as e:
            if e.code == EXIT_HASH:  # a wheel that is not what the index promised: never again
                self.state["bad"][target] = str(e)[:500]
                self.save()
            e.version = target
            raise
        failures = self.gate(slot)
        if failures:
            self._mark_bad(slot, target, failures[0])
            return Outcome(
                EXIT_GATE_FAILED,
                f"{target} was not installed: {failures[0]}; still running {running}",
                version=target,
                outcome="gate_failed",
            )
        previous_good = active if self.is_good(active) else None
        if not start:
            # nothing runs yet (an image build): the gate is all there is to check
            self.switch(slot)
            self._mark_good(slot, wheel)
            return Outcome(
                EXIT_OK,
                f"installed {target} in slot {slot} (service not started: gate passed)",
                switched=True,
                version=target,
                outcome="installed",
            )
        write_json(
            self.paths.pending,
            {
                "slot": slot,
                "version": target,
                "previous_slot": previous_good,
                "previous_version": running if previous_good else None,
                "started_at": round(self.clock(), 3),
                "pid": os.getpid(),
            },
        )
        self.switch(slot)
        log(f"switched to slot {slot}; probation {self.settings.probation_s:.0f} s")
        failure = self.probation(self.settings.probation_s)
        if failure is None:
            self._mark_good(slot, wheel)
            self._discard_pending()
            done = f"updated {running} -> {target}" if running else f"installed {target}"
            return Outcome(
                EXIT_OK,
                f"{done}: passed probation",
                switched=True,
                version=target,
                outcome="updated",
            )
        self._mark_bad(slot, target, failure)
        if previous_good is not None:
            self.switch(previous_good)
            self._discard_pending()
            ok = self._restart_and_wait(max(self.settings.probation_s, 60.0))
            back = "" if ok else " (it has not reported ready yet)"
            return Outcome(
                EXIT_ROLLED_BACK,
                f"{target} failed probation: {failure}; rolled back to {running}{back}",
                version=target,
                outcome="rolled_back",
            )
        self._discard_pending()
        return Outcome(
            EXIT_ROLLED_BACK,
            f"{target} failed probation: {failure}; there is no earlier good version to go back to",
            version=target,
            outcome="failed_first_install",
        )

    def _legacy(self, slot: str | None) -> bool:
        return bool(slot and self.state["slots"].get(slot, {}).get("legacy"))

    def _mark_bad(self, slot: str, version: str, why: str) -> None:
        self.state["bad"][version] = why[:500]
        self.slot_info(slot).update({"status": "failed", "good": False})
        self.save()

    def _mark_good(self, slot: str, wheel: Path) -> None:
        info = self.slot_info(slot)
        info.update({"status": "good", "good": True, "good_at": round(self.clock(), 3)})
        self.state["bad"].pop(info.get("version"), None)
        self.save()
        self._adopt_updater(slot)
        self._prune_downloads(keep=wheel)

    def _adopt_updater(self, slot: str) -> None:
        """The new slot's updater becomes the standalone one (atomic replace)."""
        found = sorted(
            self.paths.slot(slot).glob(f"lib/python3*/site-packages/{PACKAGE}/updater.py")
        )
        if not found:
            return
        write_atomic(self.paths.standalone, found[-1].read_bytes(), 0o755)

    def _prune_downloads(self, keep: Path) -> None:
        folder = self.paths.state / "downloads"
        if not folder.is_dir():
            return
        for f in folder.iterdir():
            if f != keep:
                with contextlib.suppress(OSError):
                    f.unlink()

    def rollback(self) -> Outcome:
        active = self.active_slot()
        other = self.other(active)
        if not self.is_good(other):
            return Outcome(
                EXIT_ERROR,
                "nothing to roll back to: the other slot was never good",
                outcome="no_rollback",
            )
        frm, to = self.active_version(), self.slot_info(other).get("version")
        self.switch(other)
        ok = (
            self._restart_and_wait(max(self.settings.probation_s, 60.0))
            if self._unit_loaded()
            else True
        )
        return Outcome(
            EXIT_OK if ok else EXIT_ERROR,
            f"rolled back {frm} -> {to}" + ("" if ok else " (the service is not active yet)"),
            switched=True,
            version=str(to),
            outcome="rolled_back_by_hand",
        )

    def _unit_loaded(self) -> bool:
        return self.host.show(self.settings.service).get("LoadState") == "loaded"

    def set_pin(self, version: str | None) -> None:
        if self.state.get("pin") != version:
            self.state["pin"] = version
            self.save()

    def install(
        self, version: str, *, pin: bool, start: bool, force: bool = False, **kw: Any
    ) -> Outcome:
        """What the role runs: the version it was given, through the same gate and probation.

        Pinned: exactly that version (a downgrade too), and OTA refuses to move it. Not pinned:
        a newer version already running (installed over the air and marked good) is kept.
        """
        self.set_pin(version if pin else None)
        self.adopt_legacy_venv()
        running = self.active_version()
        active = self.active_slot()
        # an adopted legacy venv is never "up to date": it must become a real slot
        if running is not None and self.is_good(active) and not self._legacy(active):
            if version_key(running) == version_key(version):
                return Outcome(
                    EXIT_OK,
                    f"already up to date ({running})",
                    version=running,
                    outcome="up_to_date",
                )
            if not pin and version_key(running) > version_key(version):
                return Outcome(
                    EXIT_OK,
                    f"keeping {running}, newer than the role's {version} (installed over the "
                    "air); set spyoncino_version_pinned: true to force the role's version",
                    version=running,
                    outcome="kept_newer",
                )
        return self.update(version, start=start, force=force or pin, by_role=True, **kw)

    def status(self) -> dict[str, Any]:
        active = self.active_slot()
        return {
            "current": active,
            "version": self.active_version(),
            "slots": {s: self.state["slots"].get(s, {}) for s in SLOTS},
            "pin": self.state.get("pin"),
            "bad": self.state.get("bad", {}),
            "pending": read_json(self.paths.pending),
            "last_result": self.state.get("last_result"),
        }


@contextlib.contextmanager
def locked(path: Path, wait_s: float = 0.0) -> Iterator[None]:
    """One updater at a time (flock; released by the kernel if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UpdateError(EXIT_BUSY, "another update is running") from None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


def write_request(exchange: Path, action: str = "update", version: str | None = None) -> Path:
    """What the app (status page, Telegram) calls to ask the root updater for an update."""
    req: dict[str, Any] = {"action": action, "at": round(time.time(), 3)}
    if version is not None:
        req["version"] = version
    path = exchange / "request.json"
    write_json(path, req, 0o640)
    return path


def read_request(path: Path) -> dict[str, Any]:
    """The request the service left, validated: only an action and a version, nothing that
    could name another index or file (the service is less trusted than this root unit)."""
    try:
        raw = path.read_bytes()[:_REQUEST_MAX]
    finally:
        path.unlink(missing_ok=True)
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise UpdateError(EXIT_USAGE, f"request {path} is not JSON") from e
    if not isinstance(data, dict):
        raise UpdateError(EXIT_USAGE, f"request {path} is not an object")
    action = data.get("action", "update")
    if action not in ("update", "check", "rollback"):
        raise UpdateError(EXIT_USAGE, f"request action {action!r} is not update/check/rollback")
    version = data.get("version")
    if version is not None and (not isinstance(version, str) or not _VERSION.match(version)):
        raise UpdateError(EXIT_USAGE, f"request version {version!r} is not a version")
    return {"action": action, "version": version}


# -- command line -----------------------------------------------------------------------------
COMMANDS = ("update", "status", "rollback", "boot-check", "install", "request", "lock")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spyoncino-update", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.environ.get("SPYONCINO_UPDATE_ROOT", "/opt/spyoncino"))
    p.add_argument(
        "--state-dir",
        default=os.environ.get("SPYONCINO_UPDATE_STATE", "/var/lib/spyoncino-update"),
    )
    p.add_argument(
        "--exchange-dir",
        default=os.environ.get("SPYONCINO_UPDATE_EXCHANGE", "/var/lib/spyoncino/update"),
        help="the service's folder for update requests and the result file",
    )
    p.add_argument(
        "--settings",
        default=os.environ.get("SPYONCINO_UPDATE_SETTINGS", "/etc/spyoncino/update.json"),
    )
    p.add_argument("--probation", type=float, help="seconds of probation (default: settings)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    sub = p.add_subparsers(dest="command", required=True)

    def source(q: argparse.ArgumentParser) -> None:
        q.add_argument("--version", help="exact version (default: the newest release)")
        g = q.add_mutually_exclusive_group()
        g.add_argument("--index-url", help="PEP 503 index to resolve from (default: settings)")
        g.add_argument("--wheel", help="install this wheel file (offline)")
        q.add_argument(
            "--find-links",
            action="append",
            default=[],
            metavar="DIR",
            help="folder of wheels for spyoncino and its dependencies",
        )
        q.add_argument("--pre", action="store_true", help="consider pre-releases")

    q = sub.add_parser("update", help="update to the newest (or --version) release")
    source(q)
    q.add_argument("--check", action="store_true", help="only say whether a newer one exists")
    q.add_argument("--force", action="store_true", help="retry a version marked bad")
    q = sub.add_parser("install", help="install a version (the Ansible role runs this)")
    source(q)
    q.add_argument("--pin", action="store_true", help="pin it: OTA refuses other versions")
    q.add_argument(
        "--no-start",
        action="store_true",
        help="do not start the service (image build): gate only, no probation",
    )
    q.add_argument("--force", action="store_true", help="retry a version marked bad")
    sub.add_parser("status", help="slots, versions, pin, bad versions, last result")
    sub.add_parser("rollback", help="switch to the other slot (if it was good) and restart")
    sub.add_parser("boot-check", help="at boot: go back to the last good slot if needed")
    sub.add_parser("request", help="serve the request file the service wrote (the .path unit)")
    q = sub.add_parser("lock", help="write a release lock from wheelhouses (make dist runs it)")
    q.add_argument(
        "--wheelhouse",
        action="append",
        required=True,
        metavar="DIR[@PLATFORM]",
        help="a folder pip wheel filled; PLATFORM like aarch64-cp311 (default: this one)",
    )
    q.add_argument("--extras", default="", help="comma-separated extras it was resolved with")
    q.add_argument("--out", required=True, help="the lock file to write")
    return p


def _source_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "index_url": args.index_url,
        "wheel": args.wheel,
        "find_links": args.find_links,
        "pre": args.pre,
    }


def _emit(args: argparse.Namespace, result: Outcome) -> int:
    if args.json:
        print(json.dumps(asdict(result), sort_keys=True), flush=True)
    return result.code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `spyoncino-update --version 1.2 --check` means `update --version 1.2 --check`
    with_value = {"--root", "--state-dir", "--exchange-dir", "--settings", "--probation"}
    i = 0
    while i < len(argv) and (argv[i] in with_value or argv[i] == "--json"):
        i += 2 if argv[i] in with_value else 1
    if i >= len(argv) or argv[i] not in COMMANDS:
        argv.insert(i, "update")
    args = build_parser().parse_args(argv)
    paths = Paths(Path(args.root), Path(args.state_dir), Path(args.exchange_dir))
    settings = Settings.load(Path(args.settings))
    if args.probation is not None:
        settings.probation_s = args.probation
    try:
        return _dispatch(args, paths, settings)
    except UpdateError as e:
        log(str(e))
        return _emit(args, Outcome(e.code, str(e), outcome="error"))
    except PermissionError as e:
        message = f"permission denied: {e.filename}: run it as root (sudo)"
        log(message)
        return _emit(args, Outcome(EXIT_ERROR, message, outcome="error"))


def _dispatch(args: argparse.Namespace, paths: Paths, settings: Settings) -> int:
    cmd = args.command
    if cmd == "status":
        status = Updater(paths, settings).status()
        if args.json:
            print(json.dumps(status, sort_keys=True))
        else:
            _print_status(status)
        return EXIT_OK
    if cmd == "lock":
        houses = []
        for spec in args.wheelhouse:
            folder, _, tag = spec.partition("@")
            houses.append((Path(folder), tag or platform_tag()))
        extras = [e for e in args.extras.split(",") if e]
        try:
            text = make_lock(houses, extras)
        except (OSError, ValueError) as e:
            raise UpdateError(EXIT_USAGE, f"cannot write the lock: {e}") from e
        write_atomic(Path(args.out), text.encode())
        log(f"{args.out}: {len(parse_lock(text).lines)} packages")  # type: ignore[union-attr]
        return EXIT_OK
    if cmd == "update" and args.check:
        return _emit(args, _report_check(Updater(paths, settings).check(**_source_kwargs(args))))
    if cmd == "boot-check":
        with locked(paths.state / "lock", wait_s=60):
            changed = Updater(paths, settings).recover(restart=False)
        log(
            "boot check: " + ("switched back to the last good slot" if changed else "nothing to do")
        )
        return EXIT_OK
    # a request waits its turn (else the .path unit would fire again and again)
    with locked(paths.state / "lock", wait_s=3600 if cmd == "request" else 0):
        up = Updater(paths, settings)
        up.recover(restart=True)
        if cmd == "request":
            return _serve_request(args, up)
        if cmd == "rollback":
            return _emit(args, up.report("rollback", up.rollback()))
        if cmd == "install":
            if args.version is None and args.wheel is None:
                raise UpdateError(EXIT_USAGE, "install needs --version or --wheel")
            version = args.version or wheel_version(Path(args.wheel).name) or ""
            result = _guarded(
                up,
                "install",
                lambda: up.install(
                    version,
                    pin=args.pin,
                    start=not args.no_start,
                    force=args.force,
                    **_source_kwargs(args),
                ),
            )
            return _emit(args, result)
        result = _guarded(
            up, "update", lambda: up.update(args.version, force=args.force, **_source_kwargs(args))
        )
        return _emit(args, result)


def _guarded(up: Updater, action: str, fn: Callable[[], Outcome]) -> Outcome:
    try:
        result = fn()
    except UpdateError as e:
        result = Outcome(e.code, str(e), version=e.version, outcome="error")
    return up.report(action, result)


def _report_check(result: Outcome) -> Outcome:
    log(result.message)
    return result


def _serve_request(args: argparse.Namespace, up: Updater) -> int:
    if not up.paths.request.exists():
        log("no request")
        return EXIT_OK
    try:
        req = read_request(up.paths.request)
    except UpdateError as e:
        return _emit(args, up.report("request", Outcome(e.code, str(e), outcome="bad_request")))
    if req["action"] == "check":
        return _emit(args, up.report("check", up.check()))
    if req["action"] == "rollback":
        return _emit(args, up.report("rollback", up.rollback()))
    return _emit(args, _guarded(up, "update", lambda: up.update(req["version"])))


def _print_status(status: dict[str, Any]) -> None:
    print(f"running: {status['version'] or 'nothing'} (slot {status['current'] or '-'})")
    for name, info in status["slots"].items():
        mark = "*" if name == status["current"] else " "
        if info:
            print(f" {mark} slot {name}: {info.get('version')} {info.get('status')}")
        else:
            print(f" {mark} slot {name}: empty")
    if status["pin"]:
        print(f"pinned by Ansible: {status['pin']}")
    for version, why in sorted(status["bad"].items()):
        print(f"bad: {version}: {why}")
    if status["pending"]:
        print(f"probation in progress: {status['pending'].get('version')}")
    last = status["last_result"]
    if last:
        print(f"last: {last.get('action')} -> {last.get('outcome')}: {last.get('message')}")


if __name__ == "__main__":
    sys.exit(main())
