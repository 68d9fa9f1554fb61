"""The app's side of the over-the-air updater: ask it for something, read what it answered.

The updater (``spyoncino/updater.py``, run as root by ``spyoncino-update.service``) is never
imported by the app: it must work when this package does not. The two meet in the service's
exchange folder (``/var/lib/spyoncino/update`` on a box):

``request.json``  written here: ``{"action": "update"|"check", "version": ...}``; the
                  ``spyoncino-update.path`` unit starts the updater, which reads and deletes it
``result.json``   the updater's last update / rollback result (``outcome``, ``message``,
                  ``version``, ``running``, ``exit_code``, ``at``)
``check.json``    the updater's last check (``outcome`` ``newer`` with ``version``, or
                  ``up_to_date`` / ``check_failed``)

Every function here blocks (small file reads and writes): run it in the executor.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spyoncino.helpers.files import atomic_write_bytes

DEFAULT_DIR = Path("/var/lib/spyoncino/update")
REQUEST = "request.json"
RESULT = "result.json"
CHECK = "check.json"
#: the versions the updater accepts in a request (its own pattern: PEP 440, the subset used)
VERSION = re.compile(r"^(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?(?:\.post(\d+))?(?:\.dev(\d+))?$")
Action = Literal["update", "check"]
#: exit code the updater gives a version that is not on the index (updater.EXIT_NO_SUCH_VERSION)
EXIT_NO_SUCH_VERSION = 3


def valid_version(text: str) -> bool:
    return len(text) <= 32 and VERSION.match(text) is not None


class RequestPending(Exception):
    """An update request still waits for the updater; a check must not replace it."""


def write_request(folder: Path, action: Action, version: str | None = None) -> float:
    """Ask the updater for ``action`` (crash-safe write); returns the request's time stamp.

    Only an action and a version: which index or wheel to install from is the box's own
    setting, never the (less trusted) service's. There is one request file: an update replaces
    whatever waits, a check never replaces a waiting update (``RequestPending``).
    """
    if action not in ("update", "check"):
        raise ValueError(f"not an update action: {action!r}")
    if version is not None and not valid_version(version):
        raise ValueError(f"not a version: {version[:40]!r}")
    waiting = _read(folder / REQUEST)
    if action == "check" and waiting is not None and waiting.get("action") == "update":
        raise RequestPending(pending_words(waiting))
    at = round(time.time(), 3)
    req: dict[str, Any] = {"action": action, "at": at}
    if version is not None:
        req["version"] = version
    atomic_write_bytes(folder / REQUEST, json.dumps(req).encode())
    return at


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes()[:65536])
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pending_words(req: dict[str, Any]) -> str:
    """``an update to 0.2.0 was asked for and waits for the updater``."""
    v = req.get("version")
    to = f" to {v}" if isinstance(v, str) and valid_version(v) else ""
    return f"an update{to} was asked for and waits for the updater"


@dataclass(frozen=True)
class UpdateFiles:
    """What is in the exchange folder now."""

    result: dict[str, Any] | None
    check: dict[str, Any] | None
    requested: dict[str, Any] | None

    def newer(self) -> str | None:
        """The newer version the last check found (None: none, or no check yet)."""
        c = self.check
        if c is None or c.get("outcome") != "newer":
            return None
        v = c.get("version")
        return v if isinstance(v, str) and valid_version(v) else None


def read_files(folder: Path) -> UpdateFiles | None:
    """The exchange folder's files; None when there is no folder (no updater on this box)."""
    if not folder.is_dir():
        return None
    return UpdateFiles(_read(folder / RESULT), _read(folder / CHECK), _read(folder / REQUEST))


def stamp(data: dict[str, Any] | None) -> float:
    """The ``at`` of a result (0: none)."""
    at = data.get("at") if data else None
    return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else 0.0


_HEADLINES = {
    "updated": "Updated",
    "installed": "Installed",
    "up_to_date": "Already up to date",
    "rolled_back": "Update failed, rolled back",
    "failed_first_install": "Update failed",
    "gate_failed": "Update not installed",
    "refused_bad": "Update refused",
    "pinned": "Update refused",
    "rolled_back_by_hand": "Rolled back",
    "no_rollback": "Rollback refused",
    "bad_request": "Update request refused",
    "kept_newer": "Kept the newer version",
}


def result_words(res: dict[str, Any]) -> str:
    """One plain sentence for an update result, e.g. for Telegram."""
    outcome = str(res.get("outcome", ""))
    message = str(res.get("message", ""))[:600].rstrip(". ")
    if res.get("exit_code") == EXIT_NO_SUCH_VERSION:
        head = "No such version"
    else:
        head = _HEADLINES.get(outcome, "Update failed" if res.get("exit_code") else "Update")
    running = res.get("running")
    tail = f" Running {running}." if isinstance(running, str) and running else ""
    return f"{head}: {message}.{tail}"
