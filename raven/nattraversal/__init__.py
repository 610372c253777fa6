"""NAT traversal: rendezvous through the cluster, NAT behaviour inferred from observations, hole punching.

`core` is pure (plain data in, plain data out, no I/O); see its docstring and docs/architecture.md
("NAT traversal").
"""
