"""Path health: the data plane measures itself (docs/architecture.md, "Path health").

- `core`: the pure decision core. Per target a `TargetHealth` value and `observe()` (one probe outcome in, the
  next value out): up / degraded / down with hysteresis, RTT as an EWMA, loss over a window. No I/O, no clock.
- `pinger`: the probe edge, an asyncio ICMP echo pinger (the kernel of the target answers, never an agent).
- `targets`: what this node probes, derived from its plan (pure).
- `report`: when to write the node's PathReport (pure write policy) and the writer that does it.
- `monitor`: the agent-side loop joining them, plus the Prometheus metrics.
"""
