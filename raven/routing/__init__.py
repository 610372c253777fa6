"""Routing by measured cost (pure: no I/O, no clock but the `now` its callers pass).

`graph`: link costs from measurements (RTT, loss, state) plus operator weights, between the gateways that may
connect directly. `paths`: each gateway's best next hop to every other pool (at most two hops: a relay only ever
forwards on a direct link). `selector`: hysteresis, so a path moves only for a clear, sustained gain. The agent
(`raven.agent.routes`) feeds the chosen next hops into the pure plan (`raven.agent.plan.plan(routing=...)`).
"""
