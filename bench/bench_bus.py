"""Bus throughput (target >= 100k/s with one subscriber) and head-of-line isolation.

The isolation figure: a fast subscriber's delivery lag (publish -> handler, p95) alone, and
next to a slow ``block`` subscriber whose full queue holds the publisher back. The promise is
that the slow one delays only itself: the fast one's lag must stay where it was.
"""

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


async def fast_lag_p95_ms(with_slow: bool, n: int = 400) -> float:
    bus = Bus(status_interval=0)
    lags: list[float] = []
    done = asyncio.Event()

    async def fast(msg: Message[int]) -> None:
        lags.append((time.monotonic() - msg.published_mono) * 1000)
        if len(lags) == n:
            done.set()

    async def slow(msg: Message[int]) -> None:
        await asyncio.sleep(0.002)  # a subscriber that needs 2 ms a message: always full

    if with_slow:  # routed first, the worst case for the others
        bus.subscribe("bench.topic", slow, policy="block", maxsize=4, module="slow")
    bus.subscribe("bench.topic", fast, policy="block", maxsize=1024, module="fast")
    for i in range(n):
        await bus.publish("bench.topic", i)
    await done.wait()
    await bus.close()
    lags.sort()
    return lags[int(0.95 * (len(lags) - 1))]


def main() -> None:
    n = 200_000
    results = {}
    for subs in (1, 4):
        best = max(asyncio.run(throughput(subs, n, "block")) for _ in range(3))
        results[f"block_{subs}_subscriber_msgs_per_s"] = round(best)
    results["target_msgs_per_s_1_subscriber"] = 100_000
    results["meets_target"] = results["block_1_subscriber_msgs_per_s"] >= 100_000
    alone = min(asyncio.run(fast_lag_p95_ms(False)) for _ in range(3))
    beside = min(asyncio.run(fast_lag_p95_ms(True)) for _ in range(3))
    results["fast_subscriber_lag_p95_ms_alone"] = round(alone, 4)
    results["fast_subscriber_lag_p95_ms_beside_a_slow_one"] = round(beside, 4)
    # "unchanged": within 1 ms, well under the slow subscriber's 2 ms per message
    results["slow_subscriber_delays_only_itself"] = beside - alone < 1.0
    write_result("bus", {"messages": n, **results})


if __name__ == "__main__":
    main()
