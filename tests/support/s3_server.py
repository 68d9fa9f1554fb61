"""A real S3 endpoint on 127.0.0.1 for the s3 module's tests: moto's server, in a subprocess.

``moto_server -H 127.0.0.1 -p <free port>`` keeps buckets in memory, so an outage is made with
``Proxy`` in front of it (refusing and cutting connections, then accepting again) rather than
by stopping moto, which would forget the bucket. Tests skip with the reason when moto (the
``moto[server]`` dev extra) or aiobotocore is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: parts this small are accepted (real S3 wants 5 MiB): tests upload clips in many parts
PART_MIN = 64 * 1024


def moto_binary() -> str | None:
    here = Path(sys.executable).with_name("moto_server")
    return str(here) if here.exists() else shutil.which("moto_server")


def require_moto() -> str:
    try:
        import aiobotocore  # noqa: F401
    except ImportError:
        pytest.skip("aiobotocore is not installed (pip install -e '.[dev]')")
    binary = moto_binary()
    if binary is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]', in the dev extra)")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Moto:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def moto_server(**env: str) -> Iterator[Moto]:
    binary = require_moto()
    port = free_port()
    full_env = {**os.environ, "S3_UPLOAD_PART_MIN_SIZE": str(PART_MIN), **env}
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            assert proc.poll() is None, "moto_server exited at start"
            assert time.monotonic() < deadline, "moto_server did not listen in 60 s"
            time.sleep(0.1)
        yield Moto(port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Proxy:
    """A TCP forwarder to ``target`` that can be taken down (connections refused and cut)."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target = target_port
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.connections = 0
        #: bytes forwarded from the clients to the server (what an upload budget meters)
        self.bytes_up = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._conns.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    if up:
                        self.bytes_up += len(data)
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        self._conns.difference_update({writer, up_writer})


@contextlib.asynccontextmanager
async def s3_client(
    url: str,
    key: str = "test",
    secret: str = "test",  # noqa: S107 (moto accepts any)
) -> AsyncIterator[Any]:
    from aiobotocore.session import get_session
    from botocore.config import Config

    session = get_session()
    cfg = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with session.create_client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=cfg,
    ) as client:
        yield client


async def objects(url: str, bucket: str) -> dict[str, dict[str, Any]]:
    """Every object in ``bucket``: key -> size, ETag, the sha256 metadata and the body."""
    out: dict[str, dict[str, Any]] = {}
    async with s3_client(url) as c:
        listing = await c.list_objects_v2(Bucket=bucket)
        for o in listing.get("Contents", []):
            head = await c.head_object(Bucket=bucket, Key=o["Key"])
            got = await c.get_object(Bucket=bucket, Key=o["Key"])
            body = await got["Body"].read()
            out[o["Key"]] = {
                "size": int(o["Size"]),
                "etag": str(head["ETag"]).strip('"'),
                "sha256": head.get("Metadata", {}).get("sha256"),
                "body": body,
            }
    return out


async def uploads_in_progress(url: str, bucket: str) -> list[str]:
    async with s3_client(url) as c:
        out = await c.list_multipart_uploads(Bucket=bucket)
        return [u["Key"] for u in out.get("Uploads", [])]


async def make_bucket(url: str, bucket: str) -> None:
    async with s3_client(url) as c:
        await c.create_bucket(Bucket=bucket)
