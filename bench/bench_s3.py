"""Off-box copies: the ``max_kbps`` budget held over a minute, and what a camera sends a day.

1. **Budget.** The s3 module copies a queue of 1 MB clips to moto's S3 server on 127.0.0.1
   with ``max_kbps: 1000`` (125 kB/s), through a TCP proxy that counts the bytes it forwards
   to the server (bodies plus HTTP headers: what a link would carry). After 5 s the bytes are
   read every second for 60 s: the minute's rate against the budget, and the slowest and
   fastest 10 s inside it.
2. **Sizes.** ``spyoncino run`` replays the bundled sample clip with copies on (lockstep);
   the snapshot and clip sizes of its alerting activities, read from the index, give the
   bytes one activity sends and the bytes per day for 10, 30 and 100 activities.

Results in bench/results/s3.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import SAMPLE, service_env, write_result

BUDGET_KBPS = 1000
WINDOW_S = 60.0
WARMUP_S = 5.0


async def budget(root: Path, moto_url: str, moto_port: int) -> dict[str, Any]:
    from spyoncino.core.bus import Bus
    from spyoncino.core.contracts import BoundedExecutor
    from spyoncino.helpers.files import atomic_write_bytes, media_relpath
    from spyoncino.modules.storage.s3 import S3Copy
    from spyoncino.schemas import topics
    from spyoncino.schemas.media import MediaArtifact
    from tests.support.alerts import publish_event, start_module
    from tests.support.s3_server import Proxy, make_bucket

    await make_bucket(moto_url, "bench")
    proxy = Proxy(moto_port)
    await proxy.up()
    bus = Bus(status_interval=0)
    executor = BoundedExecutor(2)
    section = {
        "bucket": "bench",
        "endpoint_url": proxy.url,
        "addressing_style": "path",
        "access_key_id": "bench",
        "secret_access_key": "bench",
        "device_id": "bench",
        "copy_kinds": ["clip"],
        "max_kbps": BUDGET_KBPS,
        "multipart_threshold_bytes": 16 * 1024 * 1024,
    }
    module = await start_module(S3Copy, "s3", bus, executor, root, section)
    clip_bytes = 1_000_000
    for i in range(12):  # 12 MB: more than the minute and its warm-up can carry
        eid = f"bench-{i:02d}"
        await publish_event(bus, root, eid)
        data = os.urandom(clip_bytes)
        rel = media_relpath("front_door", time.time(), eid, "mp4")
        digest = atomic_write_bytes(root / rel, data)
        art = MediaArtifact(
            event_id=eid,
            camera_id="front_door",
            kind="clip",
            path=str(root / rel),
            relpath=rel,
            size_bytes=clip_bytes,
            sha256=digest,
            mime="video/mp4",
            created_at=time.time(),
        )
        await bus.publish(topics.ARTIFACT.at(artifact="clip"), art)
    await asyncio.sleep(WARMUP_S)
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 <= WINDOW_S:
        samples.append((time.monotonic(), proxy.bytes_up))
        await asyncio.sleep(1.0)
    await module.stop()
    await proxy.down()
    await bus.close()
    executor.shutdown()
    (ta, ba), (tb, bb) = samples[0], samples[-1]
    rate = (bb - ba) / (tb - ta)
    tens = [
        (samples[j][1] - samples[i][1]) / (samples[j][0] - samples[i][0])
        for i in range(len(samples))
        for j in [i + 10]
        if j < len(samples)
    ]
    target = BUDGET_KBPS * 125.0
    return {
        "budget_kbps": BUDGET_KBPS,
        "budget_bytes_s": target,
        "window_s": round(tb - ta, 2),
        "bytes_in_window": bb - ba,
        "rate_bytes_s": round(rate, 1),
        "rate_vs_budget": round(rate / target, 4),
        "slowest_10s_vs_budget": round(min(tens) / target, 4),
        "fastest_10s_vs_budget": round(max(tens) / target, 4),
        "within_10_percent": abs(rate / target - 1.0) <= 0.10,
    }


async def sizes(tmp: Path, moto_url: str) -> dict[str, Any]:
    import yaml

    from tests.support.s3_server import make_bucket

    await make_bucket(moto_url, "sizes")
    cfg = {
        "cameras": {"street": {"source": str(SAMPLE), "file": {"pace": "lockstep"}}},
        "storage": {"root": str(tmp / "var")},
        "status_page": {"enabled": False},
        "runtime": {"drain_timeout": 300},
        "s3": {
            "bucket": "sizes",
            "endpoint_url": moto_url,
            "addressing_style": "path",
            "access_key_id": "bench",
            "secret_access_key": "bench",
            "device_id": "bench",
        },
        "log": {"format": "json", "level": "warning"},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = service_env()
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "spyoncino", "run", "--config", str(tmp / "config.yaml")],
        cwd=tmp,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    took = time.monotonic() - t0
    conn = sqlite3.connect(tmp / "var" / "outbox.sqlite3")  # the outbox's own file
    copied = [
        json.loads(p)
        for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE channel='s3' AND status='sent' ORDER BY id"
        )
    ]
    conn.close()
    conn = sqlite3.connect(tmp / "var" / "events.sqlite3")
    durations = dict(
        conn.execute("SELECT relpath, duration_s FROM artifacts WHERE kind='clip'").fetchall()
    )
    conn.close()
    latest: dict[str, dict[str, Any]] = {}
    for p in copied:  # a snapshot replaced at its event's end is copied again: count both
        latest.setdefault(p["key"], {"size": 0, "uploads": 0, "kind": p["kind"]})
        latest[p["key"]]["size"] += int(p["size"])
        latest[p["key"]]["uploads"] += 1
    activities = len({k.rsplit("/", 1)[1].split(".")[0] for k in latest})
    sent = sum(v["size"] for v in latest.values())
    clip_s = [float(d) for d in durations.values() if d]
    per_activity = sent / max(1, activities)
    return {
        "replay_s": round(took, 1),
        "activities_copied": activities,
        "objects": {k.rsplit("/", 1)[1]: v for k, v in latest.items()},
        "clip_duration_s": clip_s,
        "bytes_sent": sent,
        "bytes_per_activity": round(per_activity),
        "bytes_per_day": {str(n): round(n * per_activity) for n in (10, 30, 100)},
    }


async def main() -> None:
    from tests.support.s3_server import moto_server

    with moto_server() as moto, tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        result = {
            "budget": await budget(tmp / "a", moto.url, moto.port),
            "sizes": await sizes(tmp / "b", moto.url),
        }
    write_result("s3", result)


if __name__ == "__main__":
    asyncio.run(main())
