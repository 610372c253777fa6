"""`python -m raven.pathhealth.probe_run SRC DST[,DST...] SECONDS [INTERVAL] [TIMEOUT] [monitor]`: run the pinger and
print JSON (per target: the final health from the core and counts; the process's CPU seconds). With `monitor` the
agent's own path instead: `PathMonitor` (pinger, core, the Prometheus metrics, the state-change log line) with the
targets as an active gateway's peers; no API writes. Used by the pinger's netns tests and the probe CPU benchmark
(they run it inside a namespace); not part of the agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time

from prometheus_client import CollectorRegistry

from raven.pathhealth.core import HealthParams, TargetHealth, initial, observe
from raven.pathhealth.metrics import ProbeMetrics
from raven.pathhealth.monitor import PathMonitor
from raven.pathhealth.pinger import Pinger
from raven.pathhealth.targets import ProbeTarget


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


async def _run_monitor(src: str, dsts: list[str], seconds: float, interval: float, timeout_s: float
                       ) -> dict[str, object]:
    mon = PathMonitor("bench", HealthParams(), interval, timeout_s, metrics=ProbeMetrics(CollectorRegistry()))
    mon.update_plan("gateway", "gw-bench", tuple(ProbeTarget("peer", f"gw-{i}", f"n-{i}", src, d)
                                                 for i, d in enumerate(dsts)))
    mon.resume_from(None)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    task = asyncio.create_task(mon.pinger.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    status = mon.status(time.time())
    return {"cpu_seconds": cpu, "wall_seconds": seconds, "cpu_fraction": cpu / seconds,
            "stats": vars(mon.pinger.stats), "raw_socket": mon.pinger.raw_sockets(),
            "targets": {t.address: {"state": t.state, "rtt": t.rtt_seconds, "loss": t.loss_ratio}
                        for t in status.targets},
            "state_changes": mon.state_changes}


def main(argv: list[str]) -> int:
    src, dsts, seconds = argv[0], argv[1].split(","), float(argv[2])
    interval = float(argv[3]) if len(argv) > 3 else 0.2
    timeout = float(argv[4]) if len(argv) > 4 else 0.5
    run = _run_monitor if len(argv) > 5 and argv[5] == "monitor" else _run
    print(json.dumps(asyncio.run(run(src, dsts, seconds, interval, timeout))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
