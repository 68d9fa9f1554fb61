"""Email channel against a local SMTP server (aiosmtpd) started by the test."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spyoncino.core.bus import Bus
from spyoncino.core.contracts import BoundedExecutor
from spyoncino.modules.output.email import EmailOutput
from tests.support.alerts import publish_event, start_module
from tests.support.botapi import free_port
from tests.support.receivers import Mail, SmtpInbox, smtp, smtp_server  # noqa: F401 - fixture
from tests.support.wait import until

FAST = {"min_interval_s": 0.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.3}


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(2)
    modules: list[Any] = []

    async def make(**section: Any) -> EmailOutput:
        m = await start_module(EmailOutput, "email", bus, executor, tmp_path, section)
        modules.append(m)
        assert isinstance(m, EmailOutput)
        return m

    yield {"bus": bus, "make": make, "root": tmp_path}
    for m in modules:
        await m.stop()
    await bus.close()
    executor.shutdown()


async def test_the_snapshot_arrives_attached(
    env: dict[str, Any],
    smtp: tuple[SmtpInbox, int],  # noqa: F811 - the fixture
) -> None:
    inbox, port = smtp
    await env["make"](
        host="127.0.0.1",
        port=port,
        security="none",
        sender="box@example.test",
        recipients=["owner@example.test", "partner@example.test"],
        outbox=FAST,
    )
    _ev, art = await publish_event(env["bus"], env["root"], "ev-1")
    await until(lambda: len(inbox.messages) == 2)
    rcpts = sorted(r for _f, rs, _c in inbox.messages for r in rs)
    assert rcpts == ["owner@example.test", "partner@example.test"]
    mail_from, _to, raw = inbox.messages[0]
    assert mail_from == "box@example.test"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert "Front door: person (87%)" in str(msg["Subject"])
    parts = [p for p in msg.iter_attachments()]
    assert len(parts) == 1
    assert parts[0].get_content_type() == "image/jpeg"
    assert parts[0].get_content() == Path(art.path).read_bytes()
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    assert "driveway" in body.get_content()


async def test_a_server_that_is_down_gets_the_mail_when_it_is_back(
    env: dict[str, Any],
) -> None:
    port = free_port()
    m = await env["make"](
        host="127.0.0.1", port=port, security="none", recipients=["o@example.test"], outbox=FAST
    )
    await publish_event(env["bus"], env["root"], "ev-1")
    await publish_event(env["bus"], env["root"], "ev-2")
    assert m.outbox is not None
    box = m.outbox
    await until(lambda: box.stats["retries"] >= 2, what="refused and retried")  # its counters
    with smtp_server(port) as (inbox, _port):
        await inbox.messages.wait_for(2, timeout=8)
    subjects = [
        email.message_from_bytes(c, policy=email.policy.default)["Subject"]
        for _f, _r, c in inbox.messages
    ]
    assert len(subjects) == 2


async def test_a_bad_subject_template_is_refused(env: dict[str, Any]) -> None:
    from spyoncino.core.contracts import ModuleConfigError

    with pytest.raises(ModuleConfigError, match=r"email\.subject"):
        await env["make"](host="h", recipients=["a@b.c"], subject="{nope}")


async def test_without_host_it_is_inert(env: dict[str, Any]) -> None:
    m = await env["make"](recipients=["a@b.c"])
    assert "disabled" in m.health().detail


async def test_a_refused_message_fails_at_once(env: dict[str, Any]) -> None:
    from aiosmtpd.controller import Controller

    from spyoncino.schemas import topics

    class Refusing(SmtpInbox):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), b""))
            return "554 5.7.1 message refused"

    inbox = Refusing()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    failed: list[Any] = []

    async def on_failed(msg: Any) -> None:
        failed.append(msg.payload)

    env["bus"].subscribe(topics.NOTIFY.at(channel="email", status="failed"), on_failed)
    try:
        await env["make"](
            host="127.0.0.1", port=port, security="none", recipients=["o@example.test"], outbox=FAST
        )
        await publish_event(env["bus"], env["root"], "ev-1")
        await until(lambda: len(failed) == 1)
        assert failed[0].error == "SMTP 554"
        assert len(inbox.messages) == 1  # tried once, not retried
    finally:
        controller.stop()
