"""Bus throughput: messages/s delivered with 1 and 4 subscribers (target >= 100k/s with one)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from spyoncino.core.bus import Bus, Message


async def throughput(subscribers: int, n: int, policy: str) -> float:
    bus = Bus(status_interval=0)
    done = asyncio.Event()
    counts = [0] * subscribers

    def make(i: int):  # type: ignore[no-untyped-def]
        async def handler(msg: Message[int]) -> None:
            counts[i] += 1
            if counts[i] == n and all(c == n for c in counts):
                done.set()

        return handler

    for i in range(subscribers):
        bus.subscribe("bench.topic", make(i), policy=policy, maxsize=1024)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for i in range(n):
        await bus.publish("bench.topic", i)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await bus.close()
    return n / elapsed


def main() -> None:
    n = 200_000
    results = {}
    for subs in (1, 4):
        best = max(asyncio.run(throughput(subs, n, "block")) for _ in range(3))
        results[f"block_{subs}_subscriber_msgs_per_s"] = round(best)
    results["target_msgs_per_s_1_subscriber"] = 100_000
    results["meets_target"] = results["block_1_subscriber_msgs_per_s"] >= 100_000
    write_result("bus", {"messages": n, **results})


if __name__ == "__main__":
    main()
