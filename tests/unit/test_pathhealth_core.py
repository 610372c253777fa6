"""The pure decision core of path health, fed synthetic probe streams (one outcome per 0.2 s interval)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import pytest

from raven.pathhealth.core import HealthParams, TargetHealth, initial, observe, significant

P = HealthParams()  # the defaults: down after 3, up after 3, window 10, degraded at 30 % loss or 0.5 s RTT
INTERVAL = 0.2


def run(stream: Iterable[float | None], h: TargetHealth | None = None, p: HealthParams = P
        ) -> list[TargetHealth]:
    """Every intermediate health of a stream of outcomes (RTT seconds, None = lost)."""
    h = h if h is not None else initial(0.0)
    out = []
    t = h.sent * INTERVAL  # one probe per interval since 0
    for rtt in stream:
        t += INTERVAL
        h = observe(h, rtt, t, p)
        out.append(h)
    return out


def states(hs: list[TargetHealth]) -> list[str]:
    return [h.state for h in hs]


def transitions(hs: list[TargetHealth]) -> list[str]:
    out: list[str] = []
    for h in hs:
        if not out or out[-1] != h.state:
            out.append(h.state)
    return out


def healthy(n: int = 20, rtt: float = 0.001) -> TargetHealth:
    return run([rtt] * n)[-1]


def test_starts_unknown_and_comes_up_after_up_after_replies() -> None:
    hs = run([0.001] * 5)
    assert states(hs) == ["unknown", "unknown", "up", "up", "up"]
    assert hs[2].since == pytest.approx(3 * INTERVAL)


def test_a_clean_cut_is_down_after_exactly_down_after_losses_and_back_after_up_after() -> None:
    h0 = healthy()
    hs = run([None] * 10 + [0.001] * 10, h0)
    assert states(hs[:3]) == ["up", "up", "down"]
    assert hs[2].since == pytest.approx((h0.sent + 3) * INTERVAL)  # detection: exactly 3 intervals
    assert all(s == "down" for s in states(hs[2:12]))
    # Out of down after 3 replies, straight to up: the cut's losses were reported as `down`, the window starts with
    # the replies that ended it (before, "degraded until the window clears": one more state change, and API write).
    assert hs[12].state == "up" and hs[11].state == "down" and hs[12].loss_ratio == 0.0
    assert transitions(hs) == ["up", "down", "up"]
    # Losses after the return count as before: 3 of the last 10 lost (never 3 in a row) is degraded.
    more = run([None, None, 0.001, None, 0.001], hs[-1])
    assert states(more)[-1] == "degraded" and "down" not in states(more)


def test_one_lost_probe_in_ten_never_changes_anything() -> None:
    h0 = healthy()
    hs = run(([0.001] * 9 + [None]) * 50, h0)
    assert set(states(hs)) == {"up"}
    assert max(h.loss_ratio for h in hs) == pytest.approx(0.1)


def test_random_ten_percent_loss_never_goes_down() -> None:
    rng = random.Random(11)
    hs = run([None if rng.random() < 0.1 else 0.001 for _ in range(3000)], healthy())
    # 3 losses in a row at 10 % happen about once per 1000 probes: hysteresis is about consecutive losses.
    downs = sum(1 for a, b in itertools.pairwise(hs) if b.state == "down" and a.state != "down")
    # Expected about 3000 * 0.9 * 0.1**3 ~ 2.7: the reason to scale --health-down-after with a short interval.
    assert downs <= 8


def test_bursty_loss_is_degraded_not_down() -> None:
    # Bursts of two lost probes every five: 40 % loss, never three in a row.
    hs = run(([None, None] + [0.001] * 3) * 20, healthy())
    assert "down" not in states(hs)
    assert states(hs)[-1] == "degraded" and hs[-1].loss_ratio == pytest.approx(0.4)


def test_a_burst_of_down_after_losses_is_down_then_recovers_with_hysteresis() -> None:
    hs = run([None] * 3 + [0.001, None] * 5 + [0.001] * 12, healthy())
    # Alternating replies never give 3 in a row: stays down through the flapping.
    assert states(hs)[2:13] == ["down"] * 11
    assert hs[-1].state == "up"


def test_slow_rtt_drift_is_reported_once_it_moved_enough_and_degrades_past_the_threshold() -> None:
    h = healthy(rtt=0.010)
    reported_rtt = h.rtt
    writes = 0
    rtt = 0.010
    for _ in range(600):  # +1 ms per probe, from 10 ms to 610 ms
        rtt += 0.001
        h = observe(h, rtt, h.since + 1, P)
        if significant("up", reported_rtt, h, P) and h.state == "up":
            reported_rtt, writes = h.rtt, writes + 1
    # Each write is > 50 % above the last: 10 ms -> 610 ms is about log(61)/log(1.5) ~ 10 writes, not 600.
    assert 5 <= writes <= 12
    assert h.state == "degraded" and h.rtt is not None and h.rtt > P.degraded_rtt


def test_rtt_is_an_ewma_and_jitter_below_the_floor_is_not_significant() -> None:
    h = run([0.001, 0.002])[-1]
    assert h.rtt == pytest.approx(0.2 * 0.002 + 0.8 * 0.001)
    assert not significant(h.state, 0.0005, h, P)  # twice the reported RTT, but 0.7 ms: below the 10 ms floor
    jittery = run([0.002, 0.012, 0.004, 0.015, 0.003] * 40, healthy(rtt=0.005))
    assert not any(significant("up", 0.005, j, P) for j in jittery)  # a busy host's jitter is not news
    assert significant("up", 0.020, run([0.040] * 10, healthy(rtt=0.020))[-1], P)  # a real move is
    assert significant("up", None, healthy(), P)  # the first RTT is worth writing
    assert significant("up", 0.001, run([None] * 3, healthy())[-1], P)  # a state change always is


def test_counters_and_window() -> None:
    hs = run([0.001, None] * 20)
    assert hs[-1].sent == 40 and hs[-1].replies == 20 and len(hs[-1].recent) == P.window


@pytest.mark.parametrize("kwargs", [{"down_after": 0}, {"window": 2}, {"degraded_loss": 0}, {"rtt_alpha": 1.5}])
def test_bad_params_are_refused(kwargs: dict[str, int | float]) -> None:
    with pytest.raises(ValueError):
        HealthParams(**kwargs)  # type: ignore[arg-type]


def test_a_path_that_never_answered_is_unknown_until_establish_after_losses() -> None:
    p = HealthParams(establish_after=20)
    hs = run([None] * 19, p=p)
    assert states(hs) == ["unknown"] * 19  # a tunnel being set up is not a loss ...
    assert run([None] * 20, p=p)[-1].state == "down"  # ... for ever
    # Once it answered, a loss is a loss: down after down_after, as always.
    hs = run([0.001, None, None, None], p=p)
    assert states(hs) == ["unknown", "unknown", "unknown", "down"]
    assert run([None] * 3)[-1].state == "down"  # without establish_after: the old rule
