"""`python -m raven.pathhealth.probe_run SRC DST[,DST...] SECONDS [INTERVAL] [TIMEOUT]`: run the pinger and print
JSON (per target: the final health from the core and counts; the process's CPU seconds). Used by the pinger's
netns tests and the probe CPU benchmark (they run it inside a namespace); not part of the agent."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

from raven.pathhealth.core import HealthParams, TargetHealth, initial, observe
from raven.pathhealth.pinger import Pinger


async def _run(src: str, dsts: list[str], seconds: float, interval: float, timeout_s: float) -> dict[str, object]:
    params = HealthParams()
    now = time.monotonic()
    health: dict[str, TargetHealth] = {d: initial(now) for d in dsts}
    changes: list[tuple[float, str, str]] = []
    t0 = now

    def on_outcome(key: str, rtt: float | None, at: float) -> None:
        old = health[key]
        h = health[key] = observe(old, rtt, at, params)
        if h.state != old.state:
            changes.append((round(at - t0, 3), key, h.state))

    pinger: Pinger[str] = Pinger(interval, timeout_s, on_outcome)
    pinger.set_targets({d: (src, d) for d in dsts})
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    task = asyncio.create_task(pinger.run())
    await asyncio.sleep(seconds)
    raw = pinger.raw_sockets()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {
        "cpu_seconds": cpu, "wall_seconds": seconds, "cpu_fraction": cpu / seconds,
        "stats": vars(pinger.stats), "raw_socket": raw,
        "targets": {d: {"state": h.state, "rtt": h.rtt, "loss": h.loss_ratio, "sent": h.sent, "replies": h.replies}
                    for d, h in health.items()},
        "changes": changes,
    }


def main(argv: list[str]) -> int:
    src, dsts, seconds = argv[0], argv[1].split(","), float(argv[2])
    interval = float(argv[3]) if len(argv) > 3 else 0.2
    timeout = float(argv[4]) if len(argv) > 4 else 0.5
    print(json.dumps(asyncio.run(_run(src, dsts, seconds, interval, timeout))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
