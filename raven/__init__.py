"""Raven: cross-pool pod networking for edge Kubernetes clusters (`raven --mode=controller|agent`)."""

from raven.kube import k8s as _k8s

# First thing, before any module imports kubernetes_asyncio: its configuration, authentication and
# transport without its generated API classes and models (raven/kube/k8s.py says why and how). Cheap:
# nothing is imported here but the lazy package modules' specs.
_k8s.load()
