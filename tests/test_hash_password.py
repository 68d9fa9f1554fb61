"""``spyoncino hash-password`` at a real terminal (a pty): it confirms and exits cleanly."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time

import pytest


class Terminal:
    def __init__(self) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child becomes the command
            # as a shell starts a foreground command: Ctrl-C interrupts it even when this test
            # runs in a background job (which ignores SIGINT, and exec keeps that)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execv(sys.executable, [sys.executable, "-m", "spyoncino", "hash-password"])  # noqa: S606
        self.seen = ""

    def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"{text!r} never appeared; screen: {self.seen!r}")
            try:
                self.seen += os.read(self.fd, 4096).decode(errors="replace")
            except OSError:  # the child closed the terminal
                raise AssertionError(f"{text!r} never appeared; screen: {self.seen!r}") from None

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def exit_code(self) -> int:
        try:  # drain what is left so the child never blocks on a full terminal
            while select.select([self.fd], [], [], 5)[0]:
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    break
                self.seen += chunk.decode(errors="replace")
        except OSError:
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


@pytest.fixture
def term() -> Terminal:
    return Terminal()


def test_a_confirmed_password_is_hashed(term: Terminal) -> None:
    term.expect("password: ")
    term.send("correct horse\n")
    term.expect("again: ")
    term.send("correct horse\n")
    assert term.exit_code() == 0
    assert term.seen.strip().splitlines()[-1].startswith("scrypt$")
    assert "correct horse" not in term.seen  # never echoed


def test_two_different_passwords_hash_nothing(term: Terminal) -> None:
    term.expect("password: ")
    term.send("one\n")
    term.expect("again: ")
    term.send("two\n")
    assert term.exit_code() == 2
    assert "the two passwords differ" in term.seen


@pytest.mark.parametrize("key", ["\x03", "\x04"], ids=["ctrl-c", "ctrl-d"])
def test_ctrl_c_and_ctrl_d_cancel_without_a_traceback(term: Terminal, key: str) -> None:
    term.expect("password: ")
    term.send(key)
    code = term.exit_code()
    assert code in (130, -signal.SIGINT), term.seen
    assert "Traceback" not in term.seen
    assert "cancelled" in term.seen
