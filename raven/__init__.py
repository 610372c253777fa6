"""Raven: cross-pool pod networking for edge Kubernetes clusters (`raven --mode=controller|agent`)."""

from raven.kube import k8s as _k8s

# The one place the version is written (pyproject.toml reads it): a process reads it here, without
# importlib.metadata (~30 ms of every start, most of it the email package it parses metadata with).
__version__ = "0.1.0"

# First thing, before any module imports kubernetes_asyncio: its configuration, authentication and
# transport without its generated API classes and models (raven/kube/k8s.py says why and how). Cheap:
# nothing is imported here but the lazy package modules' specs.
_k8s.load()
