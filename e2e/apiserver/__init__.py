"""A Kubernetes API server for tests: real object semantics, watches and fault injection, in memory.

See e2e/README.md for what it implements and what it deliberately leaves out.
"""

from .server import SERVER_VERSION, ApiRequest, ApiServer

__all__ = ["SERVER_VERSION", "ApiRequest", "ApiServer"]
