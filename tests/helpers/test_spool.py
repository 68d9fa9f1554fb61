"""The job spool: what a module could not finish before it stopped, kept for the next start."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from spyoncino.helpers import spool


def test_a_job_reads_back_as_written_and_private(tmp_path: Path) -> None:
    path = spool.save(tmp_path / "gif", "e1", {"camera_id": "a", "n": 2}, [b"one", b"", b"3"])
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0
    assert spool.pending(tmp_path / "gif") == [path]
    assert spool.load(path) == ({"camera_id": "a", "n": 2}, [b"one", b"", b"3"])
    spool.discard(path)
    spool.discard(path)  # twice is fine
    assert spool.pending(tmp_path / "gif") == []


def test_a_truncated_job_is_refused_and_set_aside(tmp_path: Path) -> None:
    path = spool.save(tmp_path, "e2", {"k": 1}, [b"x" * 1000])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(spool.SpoolError, match="truncated"):
        spool.load(path)
    spool.set_aside(path)
    assert spool.pending(tmp_path) == []
    assert (tmp_path / "e2.bad").is_file()


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b"])
def test_a_job_name_cannot_leave_its_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a job name"):
        spool.save(tmp_path, name, {}, [])
