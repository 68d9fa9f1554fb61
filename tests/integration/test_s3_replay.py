"""The whole box replaying the bundled sample clip with off-box copies on, against moto's S3
server on 127.0.0.1 (behind a TCP proxy the tests take down): the objects and their
checksums, an endpoint that goes away mid-replay, a SIGKILL in the middle of a multipart
upload, and wrong credentials fixed with ``config.update``.

``spyoncino run`` runs in a subprocess (the SIGKILL is real); the credentials test runs the
orchestrator in-process so it can publish ``config.update`` on the bus. Everything waits on
log lines, database rows or bucket contents, each with a timeout; nothing sleeps a fixed time.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
import yaml

from spyoncino.helpers.outbox import outbox_path
from tests.integration.test_mqtt_replay import Box
from tests.support.s3_server import (
    PART_MIN,
    Moto,
    Proxy,
    make_bucket,
    moto_server,
    objects,
    s3_client,
    uploads_in_progress,
)
from tests.support.wait import until

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "spyoncino" / "data" / "sample.mp4"
BUCKET = "box-evidence"


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    with moto_server() as m:
        yield m


@pytest_asyncio.fixture
async def proxy(moto: Moto, request: pytest.FixtureRequest) -> AsyncIterator[Proxy]:
    p = Proxy(moto.port)
    await p.up()
    yield p
    await p.down()


def write_config(tmp: Path, url: str, bucket: str, s3: dict[str, Any] | None = None) -> Path:
    cfg: dict[str, Any] = {
        "cameras": {
            "street": {"name": "Street", "source": str(SAMPLE), "file": {"pace": "lockstep"}}
        },
        "storage": {"root": str(tmp / "var")},
        "status_page": {"enabled": False},
        "runtime": {"drain_timeout": 300},
        "s3": {
            "bucket": bucket,
            "endpoint_url": url,
            "addressing_style": "path",
            "device_id": "box",
            "probe_interval_s": 0.5,
            "timeout_s": 5,
            "outbox": {"backoff_initial_s": 0.1, "backoff_max_s": 1.0},
            **(s3 or {}),
        },
        "log": {"format": "json", "level": "info"},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    secrets = tmp / "secrets.yaml"  # the keys come from the secrets file, as on a box
    secrets.write_text(
        yaml.safe_dump({"s3": {"access_key_id": "test", "secret_access_key": "test-secret"}}),
        encoding="utf-8",
    )
    secrets.chmod(0o600)
    return path


def start_box(tmp: Path, config: Path) -> Box:
    box = Box(config, tmp, forever=False)
    box.args += ["--secrets", str(tmp / "secrets.yaml")]
    return box


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # a table not created yet
    finally:
        conn.close()


def copies(db: Path) -> dict[str, tuple[str, str]]:
    """Outbox rows of the s3 channel: object key -> (status, relpath) of its latest copy (a
    snapshot the writer replaced at the event's end is copied again, under the same key)."""
    out = {}
    for payload, status in rows(
        outbox_path(db),
        "SELECT payload, status FROM outbox WHERE channel='s3' AND status!='superseded' "
        "ORDER BY id",
    ):
        p = json.loads(payload)
        out[p["key"]] = (status, p["relpath"])
    return out


def artifacts(db: Path) -> dict[str, str]:
    """relpath -> sha256 of every snapshot and clip in the index."""
    return {
        r: s
        for r, s in rows(
            db, "SELECT relpath, sha256 FROM artifacts WHERE kind IN ('snapshot', 'clip')"
        )
    }


def uploaded_keys(box: Box) -> Counter[tuple[str, str]]:
    """How often each (key, content) went up."""
    return Counter(
        (str(line["key"]), str(line["sha256"]))
        for line in box.lines
        if line.get("event") == "s3_uploaded"
    )


async def check_bucket(url: str, bucket: str, db: Path) -> dict[str, dict[str, Any]]:
    """Every queued copy is in the bucket, complete, under box/<relpath>; nothing else is."""
    got = await objects(url, bucket)
    queued = copies(db)
    assert queued, "nothing was queued for copying"
    assert {k: s for k, (s, _) in queued.items()} == dict.fromkeys(got, "sent")
    index = artifacts(db)
    for key, (_, rel) in queued.items():
        assert key == f"box/{rel}"
        body = got[key]["body"]
        assert hashlib.sha256(body).hexdigest() == got[key]["sha256"] == index[rel], key
    assert await uploads_in_progress(url, bucket) == []
    return got


async def test_replay_copies_every_alerting_snapshot_and_clip(
    tmp_path: Path, moto: Moto, proxy: Proxy
) -> None:
    await make_bucket(moto.url, BUCKET)
    box = start_box(tmp_path, write_config(tmp_path, proxy.url, BUCKET))
    await box.start()
    try:
        assert await box.wait_exit(600) == 0
    finally:
        await box.stop()
    db = tmp_path / "var" / "events.sqlite3"
    got = await check_bucket(moto.url, BUCKET, db)
    kinds = Counter(k.rsplit(".", 1)[1] for k in got)
    assert kinds["jpg"] >= 1 and kinds["mp4"] >= 1, kinds
    # each alerting event's snapshot came with its clip, under <camera>/<day>/<event>
    events = {k.rsplit("/", 1)[1].split(".")[0] for k in got}
    assert all(f.endswith((".jpg", ".mp4")) for f in got)
    clips = {k.rsplit("/", 1)[1].split(".")[0] for k in got if k.endswith(".mp4")}
    assert clips == events
    assert all(k.startswith("box/street/") for k in got)
    assert max(uploaded_keys(box).values()) == 1


async def test_endpoint_down_mid_replay_then_back_copies_every_artifact_once(
    tmp_path: Path, moto: Moto, proxy: Proxy
) -> None:
    bucket = f"{BUCKET}-outage"
    await make_bucket(moto.url, bucket)
    box = start_box(tmp_path, write_config(tmp_path, proxy.url, bucket))
    db = tmp_path / "var" / "events.sqlite3"
    await box.start()
    try:
        await box.wait_log("s3_uploaded", 300)
        await proxy.down()
        down_at = time.monotonic()
        # the replay goes on to its end while the endpoint is away; the clip (made when the
        # activity closes) waits in the outbox, durably
        await box.wait_log("s3_not_ready", 300)
        await box.wait_log("inputs_finished", 300)
        assert any(s == "pending" for s, _ in copies(db).values())
        down_s = time.monotonic() - down_at
        await proxy.up()
        assert await box.wait_exit(600) == 0
    finally:
        await box.stop()
    await check_bucket(moto.url, bucket, db)
    assert max(uploaded_keys(box).values()) == 1  # every copy went up once
    ready = [line for line in box.lines if line.get("event") == "s3_ready"]
    assert len(ready) >= 2  # at start, and after the outage
    assert down_s > 10  # the outage spanned most of the replay


@pytest.mark.timeout(900)
async def test_sigkill_during_a_multipart_upload_resumes_and_completes_once(
    tmp_path: Path, moto: Moto, proxy: Proxy
) -> None:
    bucket = f"{BUCKET}-kill"
    await make_bucket(moto.url, bucket)
    # clips in 64 KiB parts at 50 kB/s: a clip takes seconds, the kill lands inside one
    s3 = {
        "copy_kinds": ["clip"],
        "multipart_threshold_bytes": 2 * PART_MIN,
        "part_size_bytes": PART_MIN,
        "max_kbps": 400,
    }
    config = write_config(tmp_path, proxy.url, bucket, s3)
    db = tmp_path / "var" / "events.sqlite3"
    box = start_box(tmp_path, config)
    await box.start()
    try:
        key, parts = await until(
            lambda: next(
                (
                    r
                    for r in rows(outbox_path(db), "SELECT key, parts FROM s3_multipart")
                    if json.loads(r[1])
                ),
                None,
            ),
            300,
            "a multipart upload with a part done",
        )
        assert box.proc is not None
        box.proc.send_signal(signal.SIGKILL)
        assert await box.wait_exit(30) == -signal.SIGKILL
    finally:
        await box.stop()
    assert await uploads_in_progress(moto.url, bucket) == [key]
    assert key not in await objects(moto.url, bucket)
    done_before = len(json.loads(parts))
    # the same box again, without its camera: only what the outbox holds is left to do
    cfg = yaml.safe_load(config.read_text())
    cfg["cameras"]["street"]["enabled"] = False
    cfg["s3"]["max_kbps"] = 0
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    again = start_box(tmp_path, config)
    again.args.append("--forever")
    await again.start()
    try:
        await until(
            lambda: copies(db).get(key, ("",))[0] == "sent", 300, "the interrupted clip sent"
        )
    finally:
        await again.stop()
    resumed = [line for line in again.lines if line.get("event") == "s3_multipart_resumed"]
    assert [line["key"] for line in resumed] == [key]
    assert resumed[0]["parts_done"] >= done_before >= 1  # the parts done were not sent again
    got = await check_bucket(moto.url, bucket, db)
    assert key in got
    assert max((uploaded_keys(box) + uploaded_keys(again)).values()) == 1


@pytest.fixture(scope="module")
def moto_auth() -> Iterator[Moto]:
    """A moto that checks credentials: its first three requests (unauthenticated) make the
    user, its policy and its access key; everything after must be signed with that key."""
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="3") as m:
        yield m


async def make_user(url: str) -> tuple[str, str]:
    from aiobotocore.session import get_session

    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    async with get_session().create_client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    ) as iam:
        await iam.create_user(UserName="box")
        await iam.put_user_policy(
            UserName="box", PolicyName="s3", PolicyDocument=json.dumps(policy)
        )
        key = (await iam.create_access_key(UserName="box"))["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


async def test_wrong_credentials_are_named_nothing_is_lost_and_config_update_resumes(
    tmp_path: Path, moto_auth: Moto
) -> None:
    from spyoncino.core.config import ConfigService, Layer, build_app_model
    from spyoncino.core.orchestrator import Orchestrator, discover
    from spyoncino.schemas import topics
    from spyoncino.schemas.control import ConfigSnapshot, ConfigUpdate
    from tests.support.alerts import publish_event

    key_id, secret = await make_user(moto_auth.url)
    async with s3_client(moto_auth.url, key_id, secret) as c:
        await c.create_bucket(Bucket=BUCKET)
    found = discover()
    reg = {n: found[n] for n in ("file", "index", "media", "s3")}
    root = tmp_path / "var"
    data: dict[str, Any] = {
        "storage": {"root": str(root)},
        "runtime": {"health_interval": 0.2},
        # the events come from the test; the camera is there to be named, not read
        "cameras": {"front_door": {"source": str(SAMPLE), "enabled": False}},
        "s3": {
            "bucket": BUCKET,
            "endpoint_url": moto_auth.url,
            "addressing_style": "path",
            "device_id": "box",
            "probe_interval_s": 0.5,
            "outbox": {"backoff_initial_s": 0.1, "backoff_max_s": 1.0},
        },
    }
    secrets = {"s3": {"access_key_id": key_id, "secret_access_key": "not-the-secret"}}
    orch = Orchestrator(
        ConfigService(build_app_model(reg), [Layer("test", data), Layer("secrets", secrets)]),
        reg,
    )
    snapshots: list[ConfigSnapshot] = []

    async def on_snapshot(msg: Any) -> None:
        snapshots.append(msg.payload)

    orch.bus.subscribe(topics.CONFIG_SNAPSHOT.name, on_snapshot, module="test")
    logs = structlog.testing.capture_logs()
    errors = logs.__enter__()
    await orch.start()
    try:
        s3 = next(s.module for s in orch.slots if s.instance == "s3")

        def health() -> Any:
            return next(m for m in orch.health().modules if m.module == "s3")

        await until(lambda: health().state == "degraded", 30, "s3 degraded")
        assert health().detail.startswith("s3.secret_access_key: ")
        assert "wrong secret" in health().detail
        assert "not-the-secret" not in json.dumps(orch.health().model_dump())
        # the rest of the box runs on, and what the box makes meanwhile is kept
        assert next(m for m in orch.health().modules if m.module == "index").state == "ok"
        _ev, art = await publish_event(orch.bus, root, "ev-while-refused")
        db = root / "events.sqlite3"
        await until(lambda: copies(db), 30, "the copy queued")
        assert [s for s, _ in copies(db).values()] == ["pending"]
        assert Path(art.path).exists()
        # wrong key id: the sentence names the other key
        await orch.bus.publish(
            topics.CONFIG_UPDATE.name,
            ConfigUpdate(changes={"s3": {"access_key_id": "AKIAWRONGWRONGWRONG0"}}),
        )
        await until(lambda: health().detail.startswith("s3.access_key_id: "), 30, "key id named")
        assert [s for s, _ in copies(db).values()] == ["pending"]
        # the right ones, through config.update: the copy goes at once
        await orch.bus.publish(
            topics.CONFIG_UPDATE.name,
            ConfigUpdate(changes={"s3": {"access_key_id": key_id, "secret_access_key": secret}}),
        )
        await until(lambda: [s for s, _ in copies(db).values()] == ["sent"], 60, "copy sent")
        assert health().state == "ok"
        await until(lambda: s3.metrics()["offbox_backlog"] == 0, 10, "backlog empty")
        # no error but the two refusals: the client swap cut no request short
        problems = [e for e in errors if e.get("event") == "s3_not_ready"]
        assert [p["problem"].split(":")[0] for p in problems] == [
            "s3.secret_access_key",
            "s3.access_key_id",
        ]
    finally:
        await orch.stop()
        logs.__exit__(None, None, None)
    async with s3_client(moto_auth.url, key_id, secret) as c:
        head = await c.head_object(Bucket=BUCKET, Key=f"box/{art.relpath}")
        assert head["Metadata"]["sha256"] == art.sha256
    assert snapshots and all(secret not in json.dumps(s.config) for s in snapshots)
