"""The s3 module against a real S3 endpoint (moto's server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spyoncino.core.bus import Bus, Message
from spyoncino.core.contracts import BoundedExecutor
from spyoncino.helpers.files import atomic_write_bytes, media_relpath
from spyoncino.modules.storage.s3 import S3Copy
from spyoncino.modules.storage.s3._budget import ThrottledBody, TokenBucket
from spyoncino.modules.storage.s3._client import multipart_etag
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.control import ControlState
from spyoncino.schemas.media import MediaArtifact
from tests.support.alerts import publish_event, start_module
from tests.support.s3_server import (
    PART_MIN,
    Moto,
    Proxy,
    make_bucket,
    moto_server,
    objects,
    uploads_in_progress,
)
from tests.support.wait import until as wait_until

FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.3, "attempt_timeout_s": 30.0}
BUCKET = "evidence"


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    with moto_server() as m:
        yield m


until = partial(wait_until, timeout=20.0)


@pytest_asyncio.fixture
async def env(tmp_path: Path, moto: Moto, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(2)
    proxy = Proxy(moto.port)
    await proxy.up()
    bucket = f"{BUCKET}-{abs(hash(request.node.name)) % 10**8}"
    await make_bucket(moto.url, bucket)
    notes: list[AlertNotification] = []

    async def collect(msg: Message[AlertNotification]) -> None:
        notes.append(msg.payload)

    bus.subscribe(topics.NOTIFY.pattern(channel="s3"), collect, module="test")
    modules: list[S3Copy] = []

    async def make(**section: Any) -> S3Copy:
        base: dict[str, Any] = {
            "bucket": bucket,
            "endpoint_url": proxy.url,
            "addressing_style": "path",
            "access_key_id": "test",
            "secret_access_key": "test",
            "device_id": "box",
            "probe_interval_s": 0.3,
            "timeout_s": 5.0,
            "multipart_threshold_bytes": 2 * PART_MIN,
            "part_size_bytes": PART_MIN,
            "outbox": FAST,
        }
        m = await start_module(S3Copy, "s3", bus, executor, tmp_path, {**base, **section})
        assert isinstance(m, S3Copy)
        modules.append(m)
        return m

    class Env:
        pass

    e: Any = Env()
    e.bus, e.root, e.make, e.notes, e.proxy, e.bucket, e.moto = (
        bus,
        tmp_path,
        make,
        notes,
        proxy,
        bucket,
        moto,
    )
    yield e
    for m in modules:
        await m.stop()
    await proxy.down()
    await bus.close()
    executor.shutdown()


async def publish_clip(bus: Bus, root: Path, event_id: str, size: int, camera: str = "front_door"):
    data = os.urandom(size)
    rel = media_relpath(camera, time.time(), event_id, "mp4")
    digest = atomic_write_bytes(root / rel, data)
    art = MediaArtifact(
        event_id=event_id,
        camera_id=camera,
        kind="clip",
        path=str(root / rel),
        relpath=rel,
        size_bytes=size,
        sha256=digest,
        mime="video/mp4",
        created_at=time.time(),
        duration_s=5.0,
    )
    await bus.publish(topics.ARTIFACT.at(artifact="clip"), art)
    return art


def sent(env: Any) -> list[tuple[str, str]]:
    return [(n.event_id, n.kind) for n in env.notes if n.status == "sent"]


async def test_snapshot_and_clip_land_under_their_keys_with_checksums(env: Any) -> None:
    m = await env.make()
    assert m.health().state == "ok"
    _ev, snap = await publish_event(env.bus, env.root, "ev-1")
    clip = await publish_clip(env.bus, env.root, "ev-1", 5 * PART_MIN + 123)  # 6 parts
    await until(lambda: len(sent(env)) == 2)
    got = await objects(env.moto.url, env.bucket)
    assert set(got) == {f"box/{snap.relpath}", f"box/{clip.relpath}"}
    assert clip.relpath.startswith("front_door/") and clip.relpath.endswith("/ev-1.mp4")
    for art in (snap, clip):
        obj = got[f"box/{art.relpath}"]
        assert hashlib.sha256(obj["body"]).hexdigest() == art.sha256 == obj["sha256"]
        assert obj["size"] == art.size_bytes
    body = got[f"box/{clip.relpath}"]["body"]
    step = range(0, len(body), PART_MIN)
    parts = [hashlib.md5(body[i : i + PART_MIN]).digest() for i in step]  # noqa: S324
    assert got[f"box/{clip.relpath}"]["etag"] == multipart_etag(parts)
    assert await uploads_in_progress(env.moto.url, env.bucket) == []
    metrics = m.metrics()
    assert metrics["offbox_backlog"] == 0
    assert metrics["offbox_uploaded_objects"] == 2
    assert metrics["offbox_uploaded_bytes"] == snap.size_bytes + clip.size_bytes
    assert "up to date" in m.health().detail


async def test_what_is_copied_follows_the_alert_rules_and_the_kinds(env: Any) -> None:
    m = await env.make(copy_kinds=["clip"])
    await env.bus.publish(topics.CONTROL_STATE.name, ControlState(armed=False))
    await until(lambda: not m.gate.state.armed)
    await publish_event(env.bus, env.root, "quiet")  # disarmed: not alerted, not copied
    await publish_clip(env.bus, env.root, "quiet", 1000)
    await env.bus.publish(topics.CONTROL_STATE.name, ControlState(armed=True))
    await until(lambda: m.gate.state.armed)
    await publish_event(env.bus, env.root, "loud")  # its snapshot is not in copy_kinds
    await publish_clip(env.bus, env.root, "loud", 1000)
    await until(lambda: len(sent(env)) == 1)
    await env.bus.drain()
    assert sent(env) == [("loud", "copy:clip")]


async def test_a_snapshot_replaced_at_the_event_end_replaces_its_copy(env: Any) -> None:
    await env.make(copy_kinds=["snapshot"])
    _ev, first = await publish_event(env.bus, env.root, "ev-1")
    await until(lambda: len(sent(env)) == 1)
    better = b"a better picture"
    digest = atomic_write_bytes(Path(first.path), better)
    art = first.model_copy(update={"sha256": digest, "size_bytes": len(better)})
    await env.bus.publish(topics.ARTIFACT.at(artifact="snapshot"), art)
    await env.bus.publish(topics.ARTIFACT.at(artifact="snapshot"), art)  # replayed: once
    await until(lambda: len(sent(env)) == 2)
    got = await objects(env.moto.url, env.bucket)
    assert list(got) == [f"box/{first.relpath}"]
    assert got[f"box/{first.relpath}"]["body"] == better
    await env.bus.drain()
    assert len(sent(env)) == 2


async def test_endpoint_down_mid_stream_then_back_copies_everything_once_in_order(
    env: Any,
) -> None:
    m = await env.make()
    await publish_event(env.bus, env.root, "ev-0")
    await until(lambda: len(sent(env)) == 1)
    await env.proxy.down()
    for i in range(1, 5):
        await publish_event(env.bus, env.root, f"ev-{i}")
        await publish_clip(env.bus, env.root, f"ev-{i}", 3 * PART_MIN)
    await until(lambda: m.health().state == "degraded")
    assert m.health().detail.startswith("s3.endpoint_url: cannot reach http://127.0.0.1:")
    assert m.metrics()["offbox_backlog"] == 8
    assert m.metrics()["offbox_backlog_bytes"] > 4 * 3 * PART_MIN
    assert sent(env) == [("ev-0", "copy:snapshot")]
    await env.proxy.up()
    await until(lambda: len(sent(env)) == 9)
    assert m.health().state == "ok"
    order = [eid for eid, _ in sent(env)]
    assert order == ["ev-0", "ev-1", "ev-1", "ev-2", "ev-2", "ev-3", "ev-3", "ev-4", "ev-4"]
    got = await objects(env.moto.url, env.bucket)
    assert len(got) == 9
    assert not [n for n in env.notes if n.status == "failed"]


async def test_a_missing_bucket_names_the_key_and_a_config_change_fixes_it(env: Any) -> None:
    m = await env.make(bucket="no-such-bucket-here")
    assert m.health().state == "degraded"
    assert m.health().detail.startswith("s3.bucket: no bucket 'no-such-bucket-here'")
    await publish_event(env.bus, env.root, "ev-1")
    await until(lambda: m.metrics()["offbox_backlog"] == 1)
    app = m.ctx.app.model_copy(update={"s3": m.cfg.model_copy(update={"bucket": env.bucket})})
    await m.configure(app)
    await until(lambda: len(sent(env)) == 1)
    assert m.health().state == "ok"


async def test_a_multipart_upload_stopped_half_way_resumes_from_its_parts(env: Any) -> None:
    # 40 kB/s: each 64 KiB part takes over a second, so the stop lands mid-upload
    m = await env.make(max_kbps=320, copy_kinds=["clip"])
    await publish_event(env.bus, env.root, "big")
    clip = await publish_clip(env.bus, env.root, "big", 6 * PART_MIN)
    key = f"box/{clip.relpath}"
    assert m._uploads is not None
    await until(lambda: (s := m._uploads.get(key)) is not None and len(s.parts) >= 2)  # type: ignore[union-attr]
    await m.stop()
    assert await uploads_in_progress(env.moto.url, env.bucket) == [key]
    done_before = len(m._uploads.get(key).parts) if m._uploads else 2
    again = await env.make(max_kbps=0, copy_kinds=["clip"])
    await until(lambda: ("big", "copy:clip") in sent(env))
    assert again.stats["multipart_resumed"] == 1
    got = await objects(env.moto.url, env.bucket)
    assert list(got) == [key]
    assert hashlib.sha256(got[key]["body"]).hexdigest() == clip.sha256
    assert await uploads_in_progress(env.moto.url, env.bucket) == []
    assert done_before >= 2


async def test_a_file_removed_before_its_copy_is_reported_lost(env: Any) -> None:
    await env.proxy.down()
    m = await env.make()
    _ev, snap = await publish_event(env.bus, env.root, "gone")
    await until(lambda: m.metrics()["offbox_backlog"] == 1)
    Path(snap.path).unlink()
    await env.proxy.up()
    await until(lambda: any(n.status == "failed" for n in env.notes))
    failed = [n for n in env.notes if n.status == "failed"]
    assert failed[0].error is not None and failed[0].error.startswith("lost before upload")
    assert m.metrics()["offbox_backlog"] == 0


def test_token_bucket_holds_the_rate_on_an_injected_clock() -> None:
    now = [0.0]
    bucket = TokenBucket(125_000.0, clock=lambda: now[0])  # 1000 kbps
    sent = 0
    while now[0] < 60.0:  # a minute of 16 KiB reads, each waiting what the bucket says
        wait = bucket.reserve(16 * 1024)
        now[0] += wait + 0.001
        sent += 16 * 1024
    rate = sent / now[0]
    assert abs(rate - 125_000.0) / 125_000.0 < 0.10


def test_throttled_body_waits_off_the_loop_thread_only() -> None:
    import threading

    now = [0.0]
    bucket = TokenBucket(10_000.0, clock=lambda: now[0])
    waited: list[float] = []

    def sleep(s: float) -> None:
        waited.append(s)
        now[0] += s

    body = ThrottledBody(b"x" * 50_000, bucket, sleep=sleep)
    assert body.read() == b"x" * 50_000  # the loop thread (botocore signing): no wait
    assert waited == []
    body.seek(0)
    out = bytearray()
    t = threading.Thread(target=lambda: out.extend(body.read()))
    t.start()
    t.join()
    assert bytes(out) == b"x" * 50_000
    assert 4.5 <= sum(waited) <= 5.5  # 50 kB at 10 kB/s


async def test_max_kbps_holds_over_a_real_upload(env: Any) -> None:
    m = await env.make(max_kbps=400, multipart_threshold_bytes=10 * PART_MIN, copy_kinds=["clip"])
    await publish_event(env.bus, env.root, "paced")
    start = time.monotonic()
    clip = await publish_clip(env.bus, env.root, "paced", 150_000)
    await until(lambda: len(sent(env)) == 1, timeout=60)
    elapsed = time.monotonic() - start
    assert m.budget is not None
    # a bucket that was full when the upload began lets its capacity (16 KiB) through at once;
    # the rest goes at the budget (the minute-long figure: bench/bench_s3.py)
    rate = (clip.size_bytes - m.budget.capacity) / elapsed
    assert rate <= 50_000 * 1.10, rate
    assert rate >= 50_000 * 0.5, rate  # the budget, not something else, paced it
    assert m.stats["uploaded_bytes"] == clip.size_bytes


def test_the_backlog_and_uploads_reach_prometheus() -> None:
    from spyoncino.modules.dashboard.status_page._metrics import Metrics, Reports
    from spyoncino.schemas.status import HealthReport, ModuleHealth

    s3 = ModuleHealth(
        module="s3",
        state="degraded",
        detail="s3.endpoint_url: cannot reach http://nas:9000: EndpointConnectionError",
        metrics={
            "offbox_backlog": 3,
            "offbox_backlog_bytes": 1_600_000,
            "offbox_oldest_age_s": 42.5,
            "offbox_ready": 0,
            "offbox_uploaded_bytes": 9_000_000,
            "offbox_uploaded_objects": 12,
            "offbox_upload_failures": 2,
            "offbox_lost_before_upload": 0,
        },
    )
    reports = Reports(health=HealthReport(overall="degraded", modules=(s3,), at=time.time()))
    text = Metrics(lambda: reports, "9.9").render().decode()
    assert 'spyoncino_offbox_backlog{module="s3"} 3.0' in text
    assert 'spyoncino_offbox_backlog_bytes{module="s3"} 1.6e+06' in text
    assert 'spyoncino_offbox_oldest_age_seconds{module="s3"} 42.5' in text
    assert 'spyoncino_offbox_ready{module="s3"} 0.0' in text
    assert 'spyoncino_offbox_uploaded_bytes_total{module="s3"} 9e+06' in text
    assert 'spyoncino_offbox_upload_failures_total{module="s3"} 2.0' in text


async def test_the_backlog_is_in_the_mqtt_device_state(tmp_path: Path, broker: Any) -> None:
    from spyoncino.modules.output.mqtt import MqttOutput
    from spyoncino.schemas.status import HealthReport, ModuleHealth
    from spyoncino.testing import BusHarness
    from tests.support.mqtt_broker import Watcher

    watch = Watcher(broker, ["spyoncino/#"])
    await watch.start()
    async with BusHarness(storage_root=tmp_path) as h:
        section = {"host": broker.host, "port": broker.port, "device_id": "box1"}
        mod = h.build(
            MqttOutput,
            {"cameras": {"front": {"source": "rtsp://cam/front"}}, "mqtt": section},
            name="mqtt",
        )
        await mod.configure(mod.ctx.app)
        await mod.start()
        s3 = ModuleHealth(
            module="s3",
            state="degraded",
            metrics={"offbox_backlog": 2, "offbox_backlog_bytes": 1_700_000, "offbox_ready": 0},
        )
        await h.bus.publish(
            topics.HEALTH.name, HealthReport(overall="degraded", modules=(s3,), at=time.time())
        )
        got = await watch.wait_for(
            lambda m: m.topic == "spyoncino/box1/state" and "offbox" in m.json()
        )
        assert got.json()["offbox"] == {
            "backlog": 2,
            "backlog_bytes": 1_700_000,
            "oldest_age_s": None,
            "ready": False,
        }
        await mod.stop()
    await watch.stop()


async def test_storage_class_and_server_side_encryption_reach_the_object(env: Any) -> None:
    from tests.support.s3_server import s3_client

    await env.make(storage_class="STANDARD_IA", server_side_encryption="AES256")
    _ev, snap = await publish_event(env.bus, env.root, "ev-1")
    clip = await publish_clip(env.bus, env.root, "ev-1", 3 * PART_MIN)  # in parts
    await until(lambda: len(sent(env)) == 2)
    async with s3_client(env.moto.url) as c:
        for art in (snap, clip):
            head = await c.head_object(Bucket=env.bucket, Key=f"box/{art.relpath}")
            assert head["StorageClass"] == "STANDARD_IA"
            assert head["ServerSideEncryption"] == "AES256"


async def test_client_side_encryption_the_provider_sees_only_ciphertext(env: Any) -> None:
    import base64

    from spyoncino.modules.storage.s3._crypto import decrypt, encrypt, load_key

    key_text = base64.b64encode(b"k" * 32).decode()
    m = await env.make(encryption_key=key_text)
    assert m.key is not None
    _ev, snap = await publish_event(env.bus, env.root, "ev-1")
    clip = await publish_clip(env.bus, env.root, "ev-1", 3 * PART_MIN)  # in parts
    await until(lambda: len(sent(env)) == 2)
    got = await objects(env.moto.url, env.bucket)
    for art in (snap, clip):
        obj = got[f"box/{art.relpath}"]
        plain = Path(art.path).read_bytes()
        assert plain not in obj["body"] and obj["body"].startswith(b"SPYC1")
        assert decrypt(load_key(key_text), obj["body"]) == plain
        assert obj["sha256"] == art.sha256  # of the file: what a restore checks
    # the same file encrypts to the same bytes: a resumed upload matches its earlier parts
    data = Path(clip.path).read_bytes()
    key = load_key(key_text)
    assert encrypt(key, data, clip.sha256) == encrypt(key, data, clip.sha256)
    assert encrypt(key, data, clip.sha256) == got[f"box/{clip.relpath}"]["body"]


def test_a_bad_encryption_key_is_named() -> None:
    from spyoncino.modules.storage.s3._config import Config, setting_problems

    cfg = Config(bucket="evidence", encryption_key="c2hvcnQ=")  # type: ignore[arg-type]
    assert setting_problems(cfg, "s3") == [
        "s3.encryption_key: 5 bytes; AES-256 needs 32 (openssl rand -base64 32)"
    ]


async def test_the_event_row_is_copied_as_json_when_the_event_ends(env: Any) -> None:
    import json

    await env.make(copy_kinds=["snapshot", "event"])
    ev, _snap = await publish_event(env.bus, env.root, "ev-1")
    ended = ev.model_copy(update={"phase": "ended", "ended_at": ev.started_at + 12.5})
    await env.bus.publish(topics.EVENT.at(kind="object", phase="ended"), ended)
    await until(lambda: len(sent(env)) == 2)
    assert sent(env) == [("ev-1", "copy:snapshot"), ("ev-1", "copy:event")]
    got = await objects(env.moto.url, env.bucket)
    day = media_relpath("front_door", ev.started_at, "ev-1", "json")
    doc = json.loads(got[f"box/{day}"]["body"])
    assert doc["event_id"] == "ev-1" and doc["phase"] == "ended"
    assert doc["labels"] == ["person"] and doc["ended_at"] == ev.started_at + 12.5
    assert hashlib.sha256(got[f"box/{day}"]["body"]).hexdigest() == got[f"box/{day}"]["sha256"]
