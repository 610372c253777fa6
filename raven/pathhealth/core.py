"""The pure decision core of path health: one probe outcome in, the target's next health out.

`observe(h, rtt, now, params)` is a pure function (the caller passes the clock): `rtt` is the round-trip time of
a reply in seconds, or None for a lost probe. The state per target:

- `unknown` until the first verdict;
- `down` after `down_after` consecutive losses (from any state; from `unknown` with no reply ever, only after
  `establish_after`: a path being set up, such as a new gateway's tunnel, is not yet a loss);
- out of `down`/`unknown` only after `up_after` consecutive replies (hysteresis: a flapping link stays down), with
  a window that starts afresh with those replies (the losses before them were the outage, already reported);
- then `degraded` while the loss ratio over the last `window` probes is >= `degraded_loss`, or the RTT
  estimate is above `degraded_rtt`; `up` otherwise. A degraded target goes back to `up` as soon as both
  clear (the window itself is the smoothing); it goes `down` only by the consecutive-loss rule.

So one lost probe in ten never changes anything (loss 0.1, never 3 in a row), a bursty link is `degraded`,
not `down`, and a clean cut is `down` after exactly `down_after` intervals.

RTT is an exponentially weighted moving average (`rtt_alpha` weight on the new sample); a loss does not move it.
`significant()` says whether a new value differs enough from the last *reported* one to be worth an API write.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from raven.api.pathreport import State


@dataclass(frozen=True)
class HealthParams:
    down_after: int = 3
    up_after: int = 3
    window: int = 10
    degraded_loss: float = 0.3
    degraded_rtt: float = 0.5  # seconds
    rtt_alpha: float = 0.2
    rtt_change: float = 0.5  # relative change of the RTT estimate that is worth reporting ...
    rtt_change_min: float = 0.004  # ... and never less than this (seconds): jitter of a busy host is not news,
    # a detour's gain (route min gain 5 ms) is
    # A path that never answered (new, or its far end moved) goes from unknown to down only after this many
    # consecutive losses (at least down_after): a tunnel being set up is not a loss.
    establish_after: int = 0

    def __post_init__(self) -> None:
        if self.down_after < 1 or self.up_after < 1:
            raise ValueError("down_after and up_after must be >= 1")
        if self.window < max(self.down_after, 1):
            raise ValueError("window must be at least down_after probes")
        if not 0 < self.degraded_loss <= 1 or not 0 < self.rtt_alpha <= 1:
            raise ValueError("degraded_loss and rtt_alpha must be in (0, 1]")
        if self.degraded_rtt <= 0 or self.rtt_change <= 0 or self.rtt_change_min < 0:
            raise ValueError("degraded_rtt and rtt_change must be positive, rtt_change_min not negative")


@dataclass(frozen=True)
class TargetHealth:
    state: State = "unknown"
    since: float = 0.0  # when `state` was entered (the caller's clock)
    rtt: float | None = None  # EWMA of reply RTTs, seconds
    recent: tuple[bool, ...] = ()  # outcome of the last `window` probes, oldest first (True: replied)
    consecutive_losses: int = 0
    consecutive_replies: int = 0
    sent: int = 0
    replies: int = 0

    @property
    def loss_ratio(self) -> float:
        return 0.0 if not self.recent else self.recent.count(False) / len(self.recent)


def as_state(text: str) -> State:
    for s in ("up", "degraded", "down"):
        if text == s:
            return s
    return "unknown"


def initial(now: float) -> TargetHealth:
    return TargetHealth(since=now)


def observe(h: TargetHealth, rtt: float | None, now: float, p: HealthParams) -> TargetHealth:
    """The health after one more probe: `rtt` seconds for a reply, None for a loss."""
    replied = rtt is not None
    recent = (*h.recent, replied)[-p.window:]
    if rtt is not None:
        est = rtt if h.rtt is None else p.rtt_alpha * rtt + (1 - p.rtt_alpha) * h.rtt
        nxt = replace(h, rtt=est, recent=recent, consecutive_losses=0, consecutive_replies=h.consecutive_replies + 1,
                      sent=h.sent + 1, replies=h.replies + 1)
    else:
        nxt = replace(h, recent=recent, consecutive_losses=h.consecutive_losses + 1, consecutive_replies=0,
                      sent=h.sent + 1)
    state = _decide(nxt, p)
    if state == h.state:
        return nxt
    if h.state in ("down", "unknown") and state != "down":
        # Back (or up for the first time): the window starts with the replies that brought it back. The losses
        # before them are the outage `down` already reported (or a path being set up), not partial loss: counted
        # again they made every recovery "down -> degraded -> up", one more state change (an API write, and on
        # the controller a Degraded condition, another Gateway write) per target and failover.
        nxt = replace(nxt, recent=nxt.recent[-nxt.consecutive_replies:])
        state = _decide(nxt, p)
    return replace(nxt, state=state, since=now)


def _decide(h: TargetHealth, p: HealthParams) -> State:
    if h.consecutive_losses >= p.down_after:
        if h.state == "unknown" and h.replies == 0 and h.consecutive_losses < p.establish_after:
            return "unknown"  # never answered yet: still being set up
        return "down"
    if h.state in ("down", "unknown") and h.consecutive_replies < p.up_after:
        return h.state
    if h.loss_ratio >= p.degraded_loss or (h.rtt is not None and h.rtt > p.degraded_rtt):
        return "degraded"
    return "up"


def significant(reported_state: str, reported_rtt: float | None, h: TargetHealth, p: HealthParams) -> bool:
    """Whether `h` should be written although `reported_*` (what the API holds) was written before: a state
    change, the first RTT, or an RTT estimate that moved by more than `rtt_change` (relative) and more than
    `rtt_change_min` seconds."""
    if reported_state != h.state:
        return True
    if h.rtt is None:
        return False
    if reported_rtt is None:
        return True
    delta = abs(h.rtt - reported_rtt)
    return delta >= p.rtt_change_min and delta > p.rtt_change * reported_rtt
