"""One owner for the event index: only ``modules/storage/index/`` touches its tables.

Everyone else asks the index over the bus (``spyoncino.schemas.index``,
``spyoncino.helpers.requests``). This fails when any other file of the package runs SQL on the
index's tables, or imports the index's SQL (its ``db``, ``schema`` or ``queries``), so the
database file cannot become a second, untyped bus again.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "spyoncino"
OWNER = PACKAGE / "modules" / "storage" / "index"
#: the index's tables
TABLES = ("events", "artifacts", "notifications", "meta")
_T = "|".join(TABLES)
#: a statement naming one of them: SQL keywords as this code base writes them (upper case)
SQL = re.compile(
    rf"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?:\s+IF\s+(?:NOT\s+)?EXISTS)?)\s+[\"'`]?(?:{_T})\b"
    rf"|\bON\s+(?:{_T})\s*\("
    rf"|\bjson_each\(\s*(?:{_T})\.",
)
#: the index's SQL lives in these; importing them from elsewhere is running it by proxy
PRIVATE = re.compile(r"^spyoncino\.modules\.storage\.index\.(db|schema|queries)\b")
#: commands, not modules: ``spyoncino storage reindex`` runs the index's rebuild offline
COMMANDS = ("cli.py", "cli")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module:
            out.append((n.lineno, n.module))
            out.extend((n.lineno, f"{n.module}.{a.name}") for a in n.names)
        elif isinstance(n, ast.Import):
            out.extend((n.lineno, a.name) for a in n.names)
    return out


def offences() -> list[str]:
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if OWNER in path.parents:
            continue
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), rel)
        for line, text in _strings(tree):
            if SQL.search(text) and re.search(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE)\b", text):
                found.append(f"{rel}:{line}: SQL on the index: {text.strip()[:80]!r}")
        if path.relative_to(PACKAGE).parts[0] in COMMANDS:
            continue
        for line, name in _imports(tree):
            if PRIVATE.match(name):
                found.append(f"{rel}:{line}: imports the index's SQL ({name})")
    return found


def test_only_storage_index_touches_the_index_tables() -> None:
    assert offences() == []


def test_the_check_sees_sql_and_imports(tmp_path: Path) -> None:
    """The patterns catch what the status page and Telegram used to run."""
    for text in (
        "SELECT id, camera_id FROM events WHERE id = ?",
        "SELECT DISTINCT value FROM events, json_each(events.labels)",
        "DELETE FROM artifacts WHERE relpath = ?",
        "INSERT INTO notifications(event_id) VALUES (?)",
        'SELECT 1 FROM "events" LIMIT 1',
        "CREATE INDEX IF NOT EXISTS x ON events(started_at)",
    ):
        assert SQL.search(text), text
    for text in (
        "SELECT payload FROM outbox WHERE status='pending'",
        "events.sqlite3",
        "/events - the last events from the index",  # words, not SQL
    ):
        assert not SQL.search(text), text
    assert PRIVATE.match("spyoncino.modules.storage.index.db")
    assert not PRIVATE.match("spyoncino.modules.storage.index")
