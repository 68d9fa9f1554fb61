"""Off-box copies of event media to S3-compatible storage (AWS S3, B2, R2, Wasabi, MinIO).

A box that is stolen, smashed or whose card dies takes its evidence with it; this module keeps
a copy of each alerting event's snapshot and clip in a bucket. Inert without ``s3.bucket``.

What is copied: the artifacts in ``copy_kinds`` of the events ``select`` picks, with the same
rules as the alert channels (``AlertGate``): ``alerted`` copies the events that raise an alert
(of ``alert_kinds``, armed, not muted), ``all`` every event of ``alert_kinds``. When
activities (#18) land, they become one more ``select`` value; the rest does not change.

Delivery goes through the persistent outbox (``spyoncino.helpers.outbox``): a copy is stored in
SQLite before anything is sent, copies go one at a time in the order they were queued, are
retried with backoff across restarts and outages for up to 30 days, and a row marked sent is
never uploaded again. On top of the outbox:

* keys are ``<prefix><camera>/<day>/<event>.<ext>`` (the local folder's layout; the prefix is
  ``<device_id>/`` unless set): a retry overwrites the same object, never makes a second;
  before uploading, an object already there with the same size and sha256 (a crash between
  the upload and its "sent") counts as done;
* a file of ``multipart_threshold_bytes`` or more goes up in parts; the upload id and each
  confirmed part are stored (``_state``), so a restart resumes where it stopped, after
  checking the parts against the provider's ``ListParts``;
* every body carries Content-MD5 (the provider refuses a corrupted one), and after the upload
  the object is read back (``HeadObject``): size, ETag (MD5, or the MD5 of the parts' MD5s)
  and the sha256 stored as metadata must match, or the copy is retried;
* ``max_kbps`` meters every byte through one token bucket (``_budget``);
* with ``encryption_key`` the box encrypts each file (AES-256-GCM, ``_crypto``) before it
  leaves, deterministically so that resumed parts still match;
* a bucket that does not exist, a key or secret the endpoint refuses, an endpoint that cannot
  be reached: the module reports ``degraded`` with a sentence naming the key, keeps queueing,
  probes the endpoint with capped backoff and resumes at once when a probe (or a
  ``config.update`` with the right settings) succeeds. Nothing queued is dropped for that.

A queued copy holds its local file: the payload's ``hold_local`` tells retention
(``storage/media.py``) not to delete it, unless the disk floor forces it; then retention logs
it and the index records the copy as failed, "lost before upload".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import socket
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

from spyoncino.core.bus import Message
from spyoncino.core.config import AppConfig
from spyoncino.core.contracts import Category, ModuleConfig, ModuleConfigError
from spyoncino.helpers.files import media_relpath
from spyoncino.helpers.outbox import (
    AlertGate,
    DeliveryError,
    OutboxChannel,
    OutboxItem,
    PermanentError,
    RetryAfter,
    ServerError,
    TransientError,
)
from spyoncino.schemas import topics
from spyoncino.schemas.alerts import AlertNotification
from spyoncino.schemas.events import EventNotice
from spyoncino.schemas.media import MediaArtifact
from spyoncino.schemas.status import ModuleHealth

from ._budget import ThrottledBody, TokenBucket
from ._client import classify, error_code, make_client, md5_b64, md5_hex, multipart_etag
from ._config import Config, setting_problems
from ._crypto import OVERHEAD, SCHEME, encrypt, load_key
from ._state import Multipart, UploadState

CHANNEL = "s3"
#: one line for every copy: they go in the order they were queued
RECIPIENT = "bucket"
LOST = "lost before upload: the local file is gone (removed by retention at the disk floor?)"
#: the share of an attempt's timeout a multipart upload works before it hands back the line
SLICE = 0.8
_CONNECTION_KEYS = (
    "endpoint_url",
    "region",
    "addressing_style",
    "access_key_id",
    "secret_access_key",
    "timeout_s",
)


def default_device_id() -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", socket.gethostname().lower()).strip("-")
    return name[:64] or "spyoncino"


def object_key(prefix: str, art: MediaArtifact) -> str:
    """``<prefix><camera>/<day>/<event>.<ext>``: the artifact's place under the media root."""
    return f"{prefix}{art.relpath}"


def _read_range(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class S3Copy(OutboxChannel[Config]):
    Config: ClassVar[type[ModuleConfig]] = Config
    category: ClassVar[Category] = "storage"
    channel: ClassVar[str] = CHANNEL

    @classmethod
    def preflight(cls, app: AppConfig, camera_id: str | None) -> list[str]:
        section = cls.name or CHANNEL
        return setting_problems(app.section(section, Config), section)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.cfg = Config()
        self.section = self.name or CHANNEL
        self.root = Path(".")
        self.db_path: Path | None = None
        self.tz: str | None = None
        self.prefix = ""
        self.budget: TokenBucket | None = None
        #: the client-side encryption key (``encryption_key``), None: copies as they are
        self.key: bytes | None = None
        self._client_cm: Any = None
        self._client: Any = None
        self._uploads: UploadState | None = None
        self._ready = asyncio.Event()
        self._kick = asyncio.Event()
        self.problem: str | None = None
        #: bumped when endpoint or keys change: a verdict on the old settings is stale
        self._generation = 0
        #: the copy that waits for the endpoint: made due at once when it is back
        self._parked: OutboxItem | None = None
        #: (event id, outbox kind) -> (queued at, bytes) of the copies not done yet
        self.backlog: dict[tuple[str, str], tuple[float, int]] = {}
        #: relpath -> sha256 last queued: a replayed artifact is not queued twice
        self._queued: OrderedDict[str, str] = OrderedDict()
        self.stats: dict[str, int] = {
            "uploaded_objects": 0,
            "uploaded_bytes": 0,
            "upload_failures": 0,
            "verify_failures": 0,
            "already_there": 0,
            "multipart_resumed": 0,
            "lost_before_upload": 0,
            "probe_failures": 0,
        }

    # -- config --------------------------------------------------------------------------------
    async def check(self, app: AppConfig) -> None:
        cfg = app.section(self.section, Config)
        problems = setting_problems(cfg, self.section)
        if problems:
            raise ModuleConfigError("; ".join(problems))
        if self.outbox is not None and cfg.bucket is None:
            raise ModuleConfigError(f"{self.section}.bucket: turning copies off needs a restart")

    async def configure(self, app: AppConfig) -> None:
        await self.check(app)
        old = self.cfg
        self.cfg = app.section(self.section, Config)
        self.root = app.storage.root
        self.db_path = app.storage.db_path
        self.tz = app.runtime.timezone
        device = self.cfg.device_id or default_device_id()
        self.prefix = self.cfg.prefix if self.cfg.prefix is not None else f"{device}/"
        secret = self.cfg.encryption_key
        self.key = load_key(secret.get_secret_value()) if secret is not None else None
        if self.budget is None or self.budget.rate != self.cfg.max_kbps * 125:
            self.budget = TokenBucket(self.cfg.max_kbps * 125.0) if self.cfg.max_kbps else None
        if self.outbox is None:
            return
        # running: delivery settings and the selection change in place; a changed endpoint
        # or key gets a new client and an immediate probe
        self.adopt_settings()
        self.gate.followups = frozenset(self.cfg.copy_kinds) - {"snapshot"}
        self.gate.respect_state = self.cfg.select == "alerted"
        if any(getattr(old, k) != getattr(self.cfg, k) for k in _CONNECTION_KEYS) or (
            old.bucket != self.cfg.bucket
        ):
            # the old client may be in the middle of a request (a probe, an upload): it is
            # closed once that can have ended, not under its feet
            old_cm = self._client_cm
            self._generation += 1
            await self._open_client()
            if old_cm is not None:
                self.spawn(self._close_later(old_cm, self.cfg.timeout_s), "close-old-client")
            self.log.info("s3_settings_changed", bucket=self.cfg.bucket)
            self._not_ready("settings changed: checking the endpoint", quiet=True)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.cfg.bucket is None:
            self.log.info("s3_disabled", reason="no s3.bucket configured")
            self.set_state("ok", "disabled: no bucket")
            return
        try:
            import aiobotocore  # noqa: F401
        except ImportError as e:
            raise ModuleConfigError(
                f"{self.section}: the aiobotocore library is missing (pip install 'spyoncino[s3]')"
            ) from e
        if self.key is not None:
            try:
                import cryptography  # noqa: F401
            except ImportError as e:
                raise ModuleConfigError(
                    f"{self.section}.encryption_key: the cryptography library is missing "
                    "(pip install 'spyoncino[s3]')"
                ) from e
        assert self.db_path is not None
        outbox = await self.open_outbox(self.db_path)
        self._uploads = await outbox.run_io(UploadState, outbox.db_path, self.db_path)
        for event_id, kind, created, size in await outbox.run_io(
            self._uploads.pending_rows, CHANNEL
        ):
            self.backlog[(event_id, kind)] = (created, size)
        self.gate = AlertGate(
            self.cfg.alert_kinds,
            frozenset(self.cfg.copy_kinds) - {"snapshot"},
            respect_state=self.cfg.select == "alerted",
        )
        self.subscribe(topics.NOTIFY.pattern(channel=CHANNEL), self._on_notify, policy="block")
        await self._open_client()
        self.listen()
        await self._probe()  # the first verdict before start returns: health is right at once
        self.spawn(self._probe_loop(), "probe")

    async def stop(self) -> None:
        await super().stop()  # the outbox's workers first: nothing uses the client after
        await self._close_client()
        state, self._uploads = self._uploads, None
        if state is not None:
            with contextlib.suppress(Exception):
                state.close()

    async def _open_client(self) -> None:
        self._client_cm = make_client(self.cfg)
        self._client = await self._client_cm.__aenter__()

    @staticmethod
    async def _close_later(cm: Any, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)

    async def _close_client(self) -> None:
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)

    # -- readiness -----------------------------------------------------------------------------
    def _not_ready(self, problem: str, *, quiet: bool = False) -> None:
        changed = problem != self.problem or self._ready.is_set()
        self.problem = problem
        self._ready.clear()
        self._kick.set()
        self.set_state("degraded", problem, None if quiet else problem)
        if changed and not quiet:
            self.log.error("s3_not_ready", problem=problem, bucket=self.cfg.bucket)

    def _now_ready(self) -> None:
        if not self._ready.is_set():
            self.log.info("s3_ready", bucket=self.cfg.bucket, backlog=len(self.backlog))
        self.problem = None
        self._ready.set()
        self.set_state("ok", str(self.cfg.bucket))
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.next_at = min(parked.next_at, time.time())  # no backoff left to wait out

    async def _probe(self) -> bool:
        """One check of endpoint, bucket and keys (``ListObjectsV2`` of one key)."""
        generation = self._generation
        try:
            await asyncio.wait_for(
                self._client.list_objects_v2(Bucket=self.cfg.bucket, MaxKeys=1, Prefix=self.prefix),
                self.cfg.timeout_s,
            )
        except Exception as e:
            if generation != self._generation:
                return False  # about settings replaced meanwhile: the next probe tells
            if error_code(e) == "AccessDenied":
                # a write-only key (the safer policy) may not list: uploads will tell
                self._now_ready()
                return True
            self.stats["probe_failures"] += 1
            problem = classify(e, self.cfg, self.section).owner
            self._not_ready(problem or f"{self.section}: {type(e).__name__}: {e}"[:300])
            return False
        if generation != self._generation:
            return False
        self._now_ready()
        return True

    async def _probe_loop(self) -> None:
        delay = 0.5
        while True:
            if self._ready.is_set():
                self._kick.clear()
                await self._kick.wait()
                delay = 0.5
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)
            self._kick.clear()
            if self._ready.is_set():
                continue
            ok = await self._probe()
            delay = 0.5 if ok else min(self.cfg.probe_interval_s, delay * 2)

    # -- queueing ------------------------------------------------------------------------------
    async def _on_artifact(self, art: MediaArtifact) -> None:
        if art.kind == "snapshot" and self.gate.alerted(art.event_id):
            # a better picture of an event already copied (the writer replaces the file in
            # place at the event's end): it replaces the copy, under the same key
            ev = self.gate.event(art.event_id)
            if ev is not None:
                await self._enqueue(ev, art)
            return
        await super()._on_artifact(art)

    async def _enqueue(self, ev: EventNotice, art: MediaArtifact | None) -> None:
        if art is None or art.kind not in self.cfg.copy_kinds:
            return  # no copy without a file (the text alert of an event without a snapshot)
        assert self.outbox is not None
        if self._queued.get(art.relpath) == art.sha256:
            return  # the same file announced again (a replayed message)
        kind = f"copy:{art.kind}"  # not an alert kind: copies keep strict queue order
        payload = {
            "key": object_key(self.prefix, art),
            "relpath": art.relpath,
            "size": art.size_bytes,
            "sha256": art.sha256,
            "mime": art.mime,
            "kind": art.kind,
            # retention keeps the file while this row is pending (storage/media.py)
            "hold_local": True,
        }
        # a newer file of the same event and kind replaces a copy still pending (and follows
        # one already made, overwriting the same key)
        stored = await self.outbox.enqueue(
            recipient=RECIPIENT,
            event_id=art.event_id,
            camera_id=art.camera_id,
            kind=kind,
            payload=payload,
            supersede=True,
        )
        if stored:
            self.backlog[(art.event_id, kind)] = (time.time(), art.size_bytes)
            self._queued[art.relpath] = art.sha256
            self._queued.move_to_end(art.relpath)
            while len(self._queued) > 4096:
                self._queued.popitem(last=False)

    async def _on_update(self, ev: EventNotice) -> None:
        """An alerted event ended: its index row, as JSON, when ``event`` is copied."""
        if ev.phase != "ended" or "event" not in self.cfg.copy_kinds:
            return
        assert self.outbox is not None
        text = json.dumps(ev.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        data = text.encode()
        rel = media_relpath(ev.camera_id, ev.started_at, ev.event_id, "json", self.tz)
        sha = _sha256(data)
        if self._queued.get(rel) == sha:
            return
        payload = {
            "key": f"{self.prefix}{rel}",
            "relpath": rel,
            "size": len(data),
            "sha256": sha,
            "mime": "application/json",
            "kind": "event",
            "inline": text,  # no file on the card: the document travels in the outbox row
        }
        stored = await self.outbox.enqueue(
            recipient=RECIPIENT,
            event_id=ev.event_id,
            camera_id=ev.camera_id,
            kind="copy:event",
            payload=payload,
            supersede=True,  # an activity that resumes and ends again: its newest row
        )
        if stored:
            self.backlog[(ev.event_id, "copy:event")] = (time.time(), len(data))
            self._queued[rel] = sha

    async def _on_notify(self, msg: Message[AlertNotification]) -> None:
        n = msg.payload
        if n.status in ("sent", "failed"):
            self.backlog.pop((n.event_id, n.kind), None)

    # -- delivery ------------------------------------------------------------------------------
    async def _deliver(self, item: OutboxItem) -> str | None:
        p = item.payload
        path = self.root / str(p["relpath"])
        deadline = time.monotonic() + self.cfg.outbox.attempt_timeout_s * SLICE
        inline = p.get("inline")
        if inline is None and not await self.ctx.executor.run(path.is_file):
            self.stats["lost_before_upload"] += 1
            self.log.error("s3_lost_before_upload", key=p["key"], relpath=p["relpath"])
            raise PermanentError(LOST)
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                self._parked = item
                raise TransientError(self.problem or "endpoint not ready") from None
        generation = self._generation
        try:
            key = self.key
            if await self._already_there(p, key is not None):
                self.stats["already_there"] += 1
                return "exists"
            source: Path | bytes = path if inline is None else str(inline).encode()
            if key is not None:  # the whole file, encrypted, is what goes up
                data = source if isinstance(source, bytes) else await self._load(p, path)
                source = await self.ctx.executor.run(encrypt, key, data, str(p["sha256"]))
            stored = int(p["size"]) + (OVERHEAD if key is not None else 0)
            if stored >= self.cfg.multipart_threshold_bytes:
                etag = await self._multipart(p, source, stored, deadline)
            else:
                etag = await self._put(p, source)
            await self._verify(p, etag, key is not None)
        except (RetryAfter, PermanentError):
            raise
        except DeliveryError:
            self.stats["upload_failures"] += 1
            raise
        except Exception as e:
            self.stats["upload_failures"] += 1
            problem = classify(e, self.cfg, self.section)
            if problem.owner is not None:
                if generation == self._generation:  # not a verdict on replaced settings
                    self._not_ready(problem.owner)
                self._parked = item  # due at once when the endpoint is ready
            raise problem.error from e
        self.stats["uploaded_objects"] += 1
        self.stats["uploaded_bytes"] += int(p["size"])
        self.backlog.pop((item.event_id, item.kind), None)
        self.log.info("s3_uploaded", key=p["key"], bytes=p["size"], sha256=p["sha256"])
        return etag

    def _object_args(self, p: dict[str, Any], encrypted: bool) -> dict[str, Any]:
        meta = {"sha256": str(p["sha256"])}  # of the file, encrypted or not
        if encrypted:
            meta["encryption"] = SCHEME
        args: dict[str, Any] = {
            "Bucket": self.cfg.bucket,
            "Key": p["key"],
            "ContentType": "application/octet-stream" if encrypted else p["mime"],
            "Metadata": meta,
        }
        if self.cfg.storage_class:
            args["StorageClass"] = self.cfg.storage_class
        if self.cfg.server_side_encryption:
            args["ServerSideEncryption"] = self.cfg.server_side_encryption
        if self.cfg.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.cfg.sse_kms_key_id
        return args

    async def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = await self._client.head_object(Bucket=self.cfg.bucket, Key=key)
        except Exception as e:
            if error_code(e) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return head

    async def _already_there(self, p: dict[str, Any], encrypted: bool) -> bool:
        head = await self._head(str(p["key"]))
        if head is None:
            return False
        meta = head.get("Metadata", {})
        stored = int(p["size"]) + (OVERHEAD if encrypted else 0)
        return (
            int(head.get("ContentLength", -1)) == stored
            and meta.get("sha256") == p["sha256"]
            and (meta.get("encryption") == SCHEME) == encrypted
        )

    async def _load(self, p: dict[str, Any], path: Path) -> bytes:
        data = await self.ctx.executor.run(path.read_bytes)
        sha = await self.ctx.executor.run(_sha256, data)
        if sha != p["sha256"] or len(data) != int(p["size"]):
            # not what was announced: copy what the card holds, and say so
            self.log.warning("s3_local_file_changed", key=p["key"], announced=p["sha256"])
            p["sha256"], p["size"] = sha, len(data)
        return data

    async def _put(self, p: dict[str, Any], source: Path | bytes) -> str:
        data = source if isinstance(source, bytes) else await self._load(p, source)
        encrypted = self.key is not None
        body = ThrottledBody(data, self.budget)
        try:
            await self._client.put_object(
                Body=body,
                ContentLength=len(data),
                ContentMD5=md5_b64(data),
                **self._object_args(p, encrypted),
            )
        finally:
            body.cancelled.set()
        return md5_hex(data)

    async def _multipart(
        self, p: dict[str, Any], source: Path | bytes, size: int, deadline: float
    ) -> str:
        """Upload ``size`` bytes of ``source`` (the file, or its encrypted bytes) in parts."""
        assert self.outbox is not None
        assert self._uploads is not None
        key, sha = str(p["key"]), str(p["sha256"])
        state = self._uploads
        run_io = self.outbox.run_io
        mp = await run_io(state.get, key)
        if mp is not None and (mp.sha256 != sha or mp.size != size):
            await self._abort(mp)
            await run_io(state.drop, key)
            mp = None
        if mp is not None:
            try:
                on_server = await self._list_parts(key, mp.upload_id)
            except Exception as e:
                if error_code(e) != "NoSuchUpload":
                    raise
                await run_io(state.drop, key)  # expired or completed: start over
                mp = None
            else:
                mp.parts = {n: e for n, e in mp.parts.items() if on_server.get(n) == e}
                self.stats["multipart_resumed"] += 1
                self.log.info(
                    "s3_multipart_resumed", key=key, parts_done=len(mp.parts), upload=mp.upload_id
                )
        if mp is None:
            args = self._object_args(p, self.key is not None)
            out = await self._client.create_multipart_upload(**args)
            mp = Multipart(
                key, str(out["UploadId"]), sha, size, self.cfg.part_size_bytes, time.time()
            )
            await run_io(state.put, mp)
        count = max(1, math.ceil(size / mp.part_size))
        md5s: list[bytes] = []
        sent_now = 0
        for n in range(1, count + 1):
            offset = (n - 1) * mp.part_size
            if isinstance(source, bytes):
                chunk = source[offset : offset + mp.part_size]
            else:
                chunk = await self.ctx.executor.run(_read_range, source, offset, mp.part_size)
            digest = hashlib.md5(chunk).digest()  # noqa: S324 (the part's ETag)
            md5s.append(digest)
            if mp.parts.get(n, "").strip('"') == digest.hex():
                continue
            if sent_now and time.monotonic() > deadline:
                # the line goes on at once, from this part (the outbox records the attempt)
                raise RetryAfter(0.0, f"multipart {key}: {len(mp.parts)}/{count} parts, continues")
            body = ThrottledBody(chunk, self.budget)
            try:
                out = await self._client.upload_part(
                    Bucket=self.cfg.bucket,
                    Key=key,
                    UploadId=mp.upload_id,
                    PartNumber=n,
                    Body=body,
                    ContentLength=len(chunk),
                    ContentMD5=md5_b64(chunk),
                )
            finally:
                body.cancelled.set()
            etag = str(out["ETag"])
            if etag.strip('"') != digest.hex() and self.cfg.server_side_encryption != "aws:kms":
                raise ServerError(f"part {n} of {key}: ETag {etag} is not its MD5")
            mp.parts[n] = etag
            sent_now += 1
            await run_io(state.put, mp)
        await self._client.complete_multipart_upload(
            Bucket=self.cfg.bucket,
            Key=key,
            UploadId=mp.upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": mp.parts[n]} for n in range(1, count + 1)]
            },
        )
        await run_io(state.drop, key)
        return multipart_etag(md5s)

    async def _list_parts(self, key: str, upload_id: str) -> dict[int, str]:
        parts: dict[int, str] = {}
        marker = 0
        while True:
            out = await self._client.list_parts(
                Bucket=self.cfg.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
            )
            for part in out.get("Parts", []):
                parts[int(part["PartNumber"])] = str(part["ETag"])
            if not out.get("IsTruncated"):
                return parts
            marker = int(out.get("NextPartNumberMarker", 0))

    async def _abort(self, mp: Multipart) -> None:
        with contextlib.suppress(Exception):
            await self._client.abort_multipart_upload(
                Bucket=self.cfg.bucket, Key=mp.key, UploadId=mp.upload_id
            )

    async def _verify(self, p: dict[str, Any], etag: str, encrypted: bool) -> None:
        head = await self._head(str(p["key"]))
        stored = int(p["size"]) + (OVERHEAD if encrypted else 0)
        problems = []
        if head is None:
            problems.append("the object is not there")
        else:
            if int(head.get("ContentLength", -1)) != stored:
                problems.append(f"size {head.get('ContentLength')} != {stored}")
            if head.get("Metadata", {}).get("sha256") != p["sha256"]:
                problems.append("sha256 metadata differs")
            # with SSE-KMS the ETag is no MD5: the Content-MD5 checks on the way in remain
            got = str(head.get("ETag", "")).strip('"')
            if self.cfg.server_side_encryption != "aws:kms" and got != etag:
                problems.append(f"ETag {got} != {etag}")
        if problems:
            self.stats["verify_failures"] += 1
            raise ServerError(f"{p['key']}: check after upload failed: {'; '.join(problems)}")

    # -- status --------------------------------------------------------------------------------
    def backlog_figures(self, now: float | None = None) -> tuple[int, int, float]:
        """(copies waiting, their bytes, age of the oldest in seconds)."""
        t = time.time() if now is None else now
        items = list(self.backlog.values())
        oldest = min((c for c, _ in items), default=t)
        return len(items), sum(s for _, s in items), max(0.0, t - oldest)

    def health(self) -> ModuleHealth:
        h = super().health()
        if h.state != "ok" or self.outbox is None:
            return h
        count, size, age = self.backlog_figures()
        detail = f"{self.cfg.bucket}: {count} to copy ({_human(size)}, oldest {age:.0f} s)"
        return h.model_copy(
            update={"detail": detail if count else f"{self.cfg.bucket}: up to date"}
        )

    def metrics(self) -> dict[str, float | int | str]:
        out = super().metrics()
        out.pop("suppressed", None)
        if self.outbox is None:
            return out
        count, size, age = self.backlog_figures()
        out.update(
            {
                "offbox_backlog": count,
                "offbox_backlog_bytes": size,
                "offbox_oldest_age_s": round(age, 1),
                "offbox_ready": int(self._ready.is_set()),
                "offbox_budget_kbps": self.cfg.max_kbps,
            }
        )
        out.update({f"offbox_{k}": v for k, v in self.stats.items()})
        return out
