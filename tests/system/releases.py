"""Releases of the project built from the working tree, and a static PEP 503 index of them.

Each release is the working tree with ``__version__`` patched and, for the broken ones, one
more patch: 0.1.2 crashes at start, 0.1.3 never becomes ready, 0.1.4 fails its selftest,
0.2.0 migrates the database schema. Every wheel carries ``spyoncino/data/constraints/release.txt``,
the lock of the wheelhouse with every file's sha256 (what ``make dist`` ships). Cached by the
tree's content.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from spyoncino.modules.storage.index.schema import current_version
from tests.system.nspawn import REPO

CRASH = '    raise SystemExit("release 0.1.2 crashes at start")\n'
NEVER_READY = "    import time\n\n    time.sleep(3600)  # release 0.1.3 never says READY\n"
SELFTEST_FAILS = """

def _release_check(ctx: Context) -> str:
    raise RuntimeError("release 0.1.4 cannot load its model")


CHECKS.append(("release", _release_check))
"""
#: the schema version release 0.2.0 migrates to: one past the checkout's own
NEXT_SCHEMA = current_version() + 1
MIGRATION = f'    {NEXT_SCHEMA}: lambda c: c.execute("ALTER TABLE events ADD COLUMN note TEXT"),\n'

RUN = "def cmd_run(args: argparse.Namespace) -> int:\n"

#: version -> what is broken about it
RELEASES = {
    "0.1.0": "the base the role installs",
    "0.1.1": "good",
    "0.1.2": "crashes at start",
    "0.1.3": "never ready",
    "0.1.4": "selftest fails",
    "0.1.5": "served with a wrong sha256",
    "0.1.6": "good",
    "0.2.0": "migrates the schema",
}


def _patch(src: Path, version: str) -> None:
    init = src / "spyoncino" / "__init__.py"
    init.write_text(
        re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text())
    )
    cli = src / "spyoncino" / "cli" / "run.py"
    assert RUN in cli.read_text(), "cmd_run not found in cli/run.py"
    if version == "0.1.2":
        cli.write_text(cli.read_text().replace(RUN, RUN + CRASH))
    elif version == "0.1.3":
        cli.write_text(cli.read_text().replace(RUN, RUN + NEVER_READY))
    elif version == "0.1.4":
        st = src / "spyoncino" / "cli" / "selftest.py"
        st.write_text(st.read_text() + SELFTEST_FAILS)
    elif version == "0.2.0":
        db = src / "spyoncino" / "modules" / "storage" / "index" / "schema.py"
        text = db.read_text()
        patched, n = re.subn(
            r"(MIGRATIONS: dict\[int, Migration\] = \{)([^}]*)\}",
            lambda m: (
                m.group(1)
                + "\n"
                + (m.group(2) + ",\n" if m.group(2).strip() else "")
                + MIGRATION
                + "}"
            ),
            text,
        )
        assert n == 1, "release 0.2.0: MIGRATIONS not found in storage/index/schema.py"
        db.write_text(patched)


def _sources() -> tuple[list[str], str]:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    names = sorted(
        f.decode()
        for f in files
        if f and ((REPO / f.decode()).is_symlink() or (REPO / f.decode()).is_file())
    )
    names = [n for n in names if not n.startswith(("tests/", "docs/", "image/", "bench/"))]
    h = hashlib.sha256()
    for n in names:
        p = REPO / n
        h.update(
            n.encode() + b"\0" + (str(p.readlink()).encode() if p.is_symlink() else p.read_bytes())
        )
    h.update(Path(__file__).read_bytes())
    return names, h.hexdigest()[:12]


#: the container's platform (Debian Bookworm x86-64: Python 3.11) and the role's default extras
PLATFORM, EXTRAS = "x86_64-cp311", ["mqtt"]


def constraints(wheelhouse: Path) -> str:
    """What ``make dist`` ships: the lock of the wheelhouse (every file's sha256), so the box
    installs each release with ``pip --require-hashes``."""
    from spyoncino.updater import make_lock

    return make_lock([(wheelhouse, PLATFORM)], EXTRAS)


def build(cache: Path, wheelhouse: Path) -> tuple[Path, float]:
    """The release wheels in ``<cache>/releases-<key>/`` and how long building them took."""
    names, key = _sources()
    out = cache / f"releases-{key}"
    if (out / ".complete").exists():
        return out, 0.0
    import time

    t0 = time.monotonic()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pins = constraints(wheelhouse)
    python = REPO / ".venv" / "bin" / "python"
    for version in RELEASES:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            for n in names:
                (src / n).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / n, src / n, follow_symlinks=False)
            _patch(src, version)
            (src / "spyoncino" / "data" / "constraints").mkdir(parents=True, exist_ok=True)
            (src / "spyoncino" / "data" / "constraints" / "release.txt").write_text(pins)
            subprocess.run(
                [
                    str(python if python.exists() else sys.executable),
                    "-m",
                    "pip",
                    "wheel",
                    "-q",
                    "--no-deps",
                    "--no-build-isolation",
                    "-w",
                    str(out),
                    str(src),
                ],
                check=True,
                capture_output=True,
            )
    # another run, started from another tree a moment ago, may still be serving its releases
    for old in cache.glob("releases-*"):
        if old != out and time.time() - old.stat().st_mtime > 2 * 3600:
            shutil.rmtree(old, ignore_errors=True)
    (out / ".complete").touch()
    return out, time.monotonic() - t0


def _sha(path: Path, memo: dict[str, str]) -> str:
    st = path.stat()
    # name and size alone matched a rebuilt wheel whose metadata changed by a digit
    key = f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
    if key not in memo:
        memo[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return memo[key]


def write_index(
    index: Path, releases: Path, wheelhouse: Path, published: list[str], memo_file: Path
) -> None:
    """``<index>/simple/<project>/index.html``: the published releases and the wheelhouse,
    links relative to the server's root (/releases, /wheelhouse), each with its sha256."""
    memo: dict[str, str] = json.loads(memo_file.read_text()) if memo_file.exists() else {}
    projects: dict[str, list[str]] = {}
    for w in sorted(wheelhouse.glob("*.whl")):
        name = re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower()
        projects.setdefault(name, []).append(
            f'<a href="/wheelhouse/{html.escape(w.name)}#sha256={_sha(w, memo)}">{w.name}</a>'
        )
    links = []
    for version in published:
        w = releases / f"spyoncino-{version}-py3-none-any.whl"
        digest = "0" * 64 if version == "0.1.5" else _sha(w, memo)
        links.append(f'<a href="/releases/{w.name}#sha256={digest}">{w.name}</a>')
    projects["spyoncino"] = links
    for name, items in projects.items():
        page = index / "simple" / name
        page.mkdir(parents=True, exist_ok=True)
        tmp = page / ".index.html.tmp"
        tmp.write_text("<!DOCTYPE html><html><body>\n" + "\n".join(items) + "\n</body></html>\n")
        tmp.replace(page / "index.html")
    memo_file.write_text(json.dumps(memo))
